package conf

import (
	"encoding/json"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	cniversion "github.com/containernetworking/cni/pkg/version"
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
	// nil, and result is converted on the way out.
	raw    []byte
	result types.Result
}

// Interface is an entry of prevResult's interfaces.
type Interface struct {
	Name    string
	Mac     string
	Sandbox string
}

// readPrev reads prevResult with the CNI library. One in the conf's version,
// as libcni passes it, is read as libcni reads a plugin's result, and
// passed on as it came: the library reads it back as the same result. Any
// other (another version, or none) is read as the library's plugins read
// it (ParsePrevResult) and converted on the way out.
func readPrev(raw []byte, confVersion string) (*Prev, error) {
	p := &Prev{}
	if r, err := cniversion.NewResult(confVersion, raw); err == nil && r.Version() == confVersion {
		p.raw, p.result = raw, r
	} else {
		pc := types.PluginConf{CNIVersion: confVersion}
		if err := json.Unmarshal(raw, &pc.RawPrevResult); err != nil {
			return nil, err
		}
		if err := cniversion.ParsePrevResult(&pc); err != nil {
			return nil, err
		}
		p.result = pc.PrevResult
	}
	// The fields kmesh-cni uses; a null entry is a nil pointer.
	switch r := p.result.(type) {
	case *types100.Result:
		for _, i := range r.Interfaces {
			if i != nil {
				p.Interfaces = append(p.Interfaces, Interface{Name: i.Name, Mac: i.Mac, Sandbox: i.Sandbox})
			}
		}
		for _, ip := range r.IPs {
			if ip != nil {
				p.addIP(ip.Address)
			}
		}
	case *types040.Result:
		for _, i := range r.Interfaces {
			if i != nil {
				p.Interfaces = append(p.Interfaces, Interface{Name: i.Name, Mac: i.Mac, Sandbox: i.Sandbox})
			}
		}
		for _, ip := range r.IPs {
			if ip != nil {
				p.addIP(ip.Address)
			}
		}
	}
	return p, nil
}

// addIP keeps an address with its prefix length ("10.244.0.5/24": the
// library keeps the address, not the network).
func (p *Prev) addIP(n net.IPNet) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return
	}
	if n.IP.To4() != nil && len(n.Mask) == net.IPv4len {
		a = a.Unmap()
	}
	ones, _ := n.Mask.Size()
	p.IPs = append(p.IPs, netip.PrefixFrom(a, ones))
}
