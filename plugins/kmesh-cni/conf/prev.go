package conf

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	cniversion "github.com/containernetworking/cni/pkg/version"

	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/internal/jsontree"
)

// Prev is the previous plugin's result, as far as kmesh-cni reads it (the
// fields have the same shape in every spec version it speaks).
type Prev struct {
	Interfaces []Interface
	// IPs are the addresses of ips that have one, with their prefix length
	// ("10.244.0.5/24").
	IPs []netip.Prefix

	// raw is prevResult as it came, passed on byte for byte when it is in
	// the conf's version (what libcni hands a chained plugin); otherwise
	// result is the CNI library's reading of it, converted on the way out.
	raw    []byte
	result types.Result
}

// Interface is an entry of prevResult's interfaces.
type Interface struct {
	Name    string
	Mac     string
	Sandbox string
}

// readPrev reads prevResult. It accepts exactly what the CNI library's
// reading at the conf's version accepts (a fuzz test holds the two
// together): when prevResult is in the conf's version, as libcni passes
// it, by checking the shape of every field that version's result type
// has; otherwise through the library itself, as before.
func readPrev(v *jsontree.Value, confVersion string) (*Prev, error) {
	p := &Prev{raw: v.Raw}
	if prevVersion(v) != confVersion || foldDuplicates(v) {
		r, err := readPrevByLibrary(v, confVersion)
		if err != nil {
			return nil, err
		}
		p.raw, p.result = nil, r
	} else if err := checkResult(v, confVersion); err != nil {
		return nil, err
	}
	// The fields kmesh-cni uses (the same in every version; with keys that
	// differ only by case, the document's last one).
	if ifs, ok := getFold(v, "interfaces"); ok && ifs.Kind == jsontree.Array {
		for i := range ifs.Items {
			it := &ifs.Items[i]
			if it.Kind != jsontree.Object {
				continue
			}
			var f Interface
			for _, m := range []struct {
				key string
				to  *string
			}{{"name", &f.Name}, {"mac", &f.Mac}, {"sandbox", &f.Sandbox}} {
				if s, ok := getFold(it, m.key); ok && s.Kind == jsontree.String {
					*m.to = s.Str
				}
			}
			p.Interfaces = append(p.Interfaces, f)
		}
	}
	if ips, ok := getFold(v, "ips"); ok && ips.Kind == jsontree.Array {
		for i := range ips.Items {
			if a, ok := getFold(&ips.Items[i], "address"); ok && a.Kind == jsontree.String {
				if pfx, err := parseCIDR(a.Str); err == nil {
					p.IPs = append(p.IPs, pfx)
				}
			}
		}
	}
	return p, nil
}

// readPrevByLibrary reads prevResult as kmesh-cni did before it read JSON
// by hand: through the CNI library at the conf's version (which fills in a
// missing version, and converts on the way out).
func readPrevByLibrary(v *jsontree.Value, confVersion string) (types.Result, error) {
	var raw map[string]any
	if err := json.Unmarshal(v.Raw, &raw); err != nil {
		return nil, err
	}
	pc := types.PluginConf{CNIVersion: confVersion, RawPrevResult: raw}
	if err := cniversion.ParsePrevResult(&pc); err != nil {
		return nil, err
	}
	return pc.PrevResult, nil
}

// getFold is the member whose key matches key but for case (as
// encoding/json matches fields), the last of several.
func getFold(v *jsontree.Value, key string) (*jsontree.Value, bool) {
	for i := len(v.Members) - 1; i >= 0; i-- {
		if strings.EqualFold(v.Members[i].Key, key) {
			return &v.Members[i].Value, true
		}
	}
	return nil, false
}

// foldDuplicates tells whether some object in v has two keys that differ
// only by case. encoding/json reads both into one field, and which one
// wins depends on their order, which the library's reading changes (it
// goes through a map): such a result is left to the library.
func foldDuplicates(v *jsontree.Value) bool {
	for i := range v.Members {
		for j := i + 1; j < len(v.Members); j++ {
			if a, b := v.Members[i].Key, v.Members[j].Key; a != b && strings.EqualFold(a, b) {
				return true
			}
		}
		if foldDuplicates(&v.Members[i].Value) {
			return true
		}
	}
	for i := range v.Items {
		if foldDuplicates(&v.Items[i]) {
			return true
		}
	}
	return false
}

// prevVersion is prevResult's cniVersion when it has exactly one key for
// it, spelt as the spec does; "" otherwise (the library then decides
// which of several counts).
func prevVersion(v *jsontree.Value) string {
	version, n := "", 0
	for i := range v.Members {
		m := &v.Members[i]
		if !strings.EqualFold(m.Key, "cniVersion") {
			continue
		}
		if n++; m.Key == "cniVersion" && m.Value.Kind == jsontree.String {
			version = m.Value.Str
		}
	}
	if n != 1 {
		return ""
	}
	return version
}

// parseCIDR reads an address with its prefix length as the CNI library
// does (net.ParseCIDR, keeping the address rather than the network).
func parseCIDR(s string) (netip.Prefix, error) {
	ip, ipn, err := net.ParseCIDR(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a, _ := netip.AddrFromSlice(ip)
	if ip.To4() != nil && len(ipn.Mask) == net.IPv4len {
		a = a.Unmap()
	}
	ones, _ := ipn.Mask.Size()
	return netip.PrefixFrom(a, ones), nil
}

// A field kind, as encoding/json would decode a value into the library's
// result types.
type kind int

const (
	kString  kind = iota // string: a string or null
	kInt                 // int or *int: an integer that fits, or null
	kIP                  // net.IP (text): "" or an IP, or null
	kCIDR                // types.IPNet (JSON unmarshaler, also given null): a CIDR
	kStrings             // []string: an array (of strings or nulls), or null
)

// Each result version's fields (keys match case-insensitively, as in
// encoding/json; other keys are ignored).
var (
	interface040 = map[string]kind{"name": kString, "mac": kString, "sandbox": kString}
	interface100 = map[string]kind{"name": kString, "mac": kString, "mtu": kInt, "sandbox": kString, "socketPath": kString, "pciID": kString}
	ipConfig040  = map[string]kind{"version": kString, "interface": kInt, "address": kCIDR, "gateway": kIP}
	ipConfig100  = map[string]kind{"interface": kInt, "address": kCIDR, "gateway": kIP}
	route        = map[string]kind{"dst": kCIDR, "gw": kIP, "mtu": kInt, "advmss": kInt, "priority": kInt, "table": kInt, "scope": kInt}
	dns          = map[string]kind{"nameservers": kStrings, "domain": kString, "search": kStrings, "options": kStrings}
)

// checkResult checks prevResult against the result type of version's
// family.
func checkResult(v *jsontree.Value, version string) error {
	ifc, ipc := interface100, ipConfig100
	if strings.HasPrefix(version, "0.") {
		ifc, ipc = interface040, ipConfig040
	}
	for i := range v.Members {
		m := &v.Members[i]
		var err error
		switch {
		case strings.EqualFold(m.Key, "cniVersion"):
			err = checkField(m.Key, &m.Value, kString)
		case strings.EqualFold(m.Key, "interfaces"):
			err = checkList(m.Key, &m.Value, ifc)
		case strings.EqualFold(m.Key, "ips"):
			err = checkList(m.Key, &m.Value, ipc)
		case strings.EqualFold(m.Key, "routes"):
			err = checkList(m.Key, &m.Value, route)
		case strings.EqualFold(m.Key, "dns"):
			if m.Value.Kind != jsontree.Null {
				err = checkObject(m.Key, &m.Value, dns)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// checkList checks an array of objects (null elements allowed: they
// decode to nil pointers), or null.
func checkList(key string, v *jsontree.Value, fields map[string]kind) error {
	switch v.Kind {
	case jsontree.Null:
		return nil
	case jsontree.Array:
	default:
		return fmt.Errorf("%s must be an array, not a JSON %s", key, v.Kind)
	}
	for i := range v.Items {
		it := &v.Items[i]
		if it.Kind == jsontree.Null {
			continue
		}
		if err := checkObject(fmt.Sprintf("%s[%d]", key, i), it, fields); err != nil {
			return err
		}
	}
	return nil
}

func checkObject(key string, v *jsontree.Value, fields map[string]kind) error {
	if v.Kind != jsontree.Object {
		return fmt.Errorf("%s must be an object, not a JSON %s", key, v.Kind)
	}
	for i := range v.Members {
		m := &v.Members[i]
		for name, k := range fields {
			if strings.EqualFold(m.Key, name) {
				if err := checkField(key+"."+m.Key, &m.Value, k); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func checkField(key string, v *jsontree.Value, k kind) error {
	switch k {
	case kString:
		if v.Kind == jsontree.String || v.Kind == jsontree.Null {
			return nil
		}
		return fmt.Errorf("%s must be a string, not a JSON %s", key, v.Kind)
	case kInt:
		switch v.Kind {
		case jsontree.Null:
			return nil
		case jsontree.Number:
			if _, err := strconv.ParseInt(v.Str, 10, 64); err == nil {
				return nil
			}
			return fmt.Errorf("%s must be an integer, not %s", key, v.Str)
		}
		return fmt.Errorf("%s must be an integer, not a JSON %s", key, v.Kind)
	case kIP:
		switch v.Kind {
		case jsontree.Null:
			return nil
		case jsontree.String:
			if v.Str == "" || net.ParseIP(v.Str) != nil {
				return nil
			}
			return fmt.Errorf("%s %q is not an IP address", key, v.Str)
		}
		return fmt.Errorf("%s must be a string, not a JSON %s", key, v.Kind)
	case kCIDR:
		s := ""
		switch v.Kind {
		case jsontree.String:
			s = v.Str
		case jsontree.Null:
		default:
			return fmt.Errorf("%s must be a string, not a JSON %s", key, v.Kind)
		}
		if _, err := parseCIDR(s); err != nil {
			return fmt.Errorf("%s %q: want an address with its prefix length", key, s)
		}
		return nil
	case kStrings:
		switch v.Kind {
		case jsontree.Null:
			return nil
		case jsontree.Array:
			for i := range v.Items {
				if it := &v.Items[i]; it.Kind != jsontree.String && it.Kind != jsontree.Null {
					return fmt.Errorf("%s[%d] must be a string, not a JSON %s", key, i, it.Kind)
				}
			}
			return nil
		}
		return fmt.Errorf("%s must be an array, not a JSON %s", key, v.Kind)
	}
	return nil
}
