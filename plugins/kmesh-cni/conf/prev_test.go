package conf

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/types/create"
	cniversion "github.com/containernetworking/cni/pkg/version"
)

func confWith(version, prev string) []byte {
	return []byte(`{"cniVersion":"` + version + `","name":"k8s","type":"kmesh-cni","prevResult":` + prev + `}`)
}

// What the chain gave is what kmesh-cni gives back, byte for byte.
func TestPrevResultPassesThroughUnchanged(t *testing.T) {
	prev := `{"cniVersion":"1.1.0", "interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:01","mtu":1450,"pciID":"x"}],` +
		`"ips":[{"address":"10.244.0.5/24","gateway":"10.244.0.1","interface":0},{"address":"fd00::5/64"}],` +
		`"routes":[{"dst":"0.0.0.0/0","gw":"10.244.0.1","table":5}],"dns":{"nameservers":["10.96.0.10"]},"someFutureField":{"a":[1,2]}}`
	c, err := Parse(confWith("1.1.0", prev))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := c.PrintPrevResult(&out); err != nil {
		t.Fatal(err)
	}
	if out.String() != prev {
		t.Fatalf("passed on\n%s\nnot\n%s", out.String(), prev)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.244.0.5/24"), netip.MustParsePrefix("fd00::5/64")}
	if len(c.Prev.IPs) != 2 || c.Prev.IPs[0] != want[0] || c.Prev.IPs[1] != want[1] {
		t.Fatalf("IPs %v", c.Prev.IPs)
	}
}

// A prevResult in another version of the conf's family, or with no
// version, goes out in the conf's version, as the CNI library converts it.
func TestPrevResultInAnotherVersionIsConverted(t *testing.T) {
	for _, tc := range []struct{ conf, prev string }{
		{"1.0.0", `{"cniVersion":"1.1.0","ips":[{"address":"10.244.0.5/24"}]}`},
		{"1.0.0", `{"ips":[{"address":"10.244.0.5/24"}]}`},
		{"0.4.0", `{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.244.0.5/24"}]}`},
	} {
		c, err := Parse(confWith(tc.conf, tc.prev))
		if err != nil {
			t.Fatalf("%s in %s: %v", tc.prev, tc.conf, err)
		}
		var out bytes.Buffer
		if err := c.PrintPrevResult(&out); err != nil {
			t.Fatal(err)
		}
		var got struct {
			CNIVersion string `json:"cniVersion"`
		}
		if err := json.Unmarshal(out.Bytes(), &got); err != nil || got.CNIVersion != tc.conf {
			t.Fatalf("%s in %s: passed on %s (%v)", tc.prev, tc.conf, out.String(), err)
		}
		if len(c.Prev.IPs) != 1 || c.Prev.IPs[0] != netip.MustParsePrefix("10.244.0.5/24") {
			t.Fatalf("IPs %v", c.Prev.IPs)
		}
	}
}

// A prevResult the library cannot read is refused (code 6) with the
// library's reason, which names the value or the field.
func TestPrevResultRefusedWithWhatIsWrong(t *testing.T) {
	for prev, says := range map[string]string{
		`{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1"}]}`:                              `invalid CIDR address: 10.0.0.1`,
		`{"cniVersion":"1.0.0","ips":[{"address":null}]}`:                                    "invalid CIDR address",
		`{"cniVersion":"1.0.0","ips":{}}`:                                                    "cannot unmarshal object into Go struct field Result.ips",
		`{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mtu":"1500"}]}`:                 "interfaces.mtu of type int",
		`{"cniVersion":"1.0.0","routes":[{"dst":"0.0.0.0/0","gw":"nonsense"}]}`:              `invalid IP address: nonsense`,
		`{"cniVersion":"1.0.0","dns":{"nameservers":"10.96.0.10"}}`:                          "dns.nameservers of type []string",
		`{"cniVersion":"1.0.0","IPS":[{"address":"x"}]}`:                                     `invalid CIDR address: x`,
		`{"cniVersion":"0.4.0","ips":[{"address":"10.0.0.1/8"}]}`:                            "0.4.0",
		`{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mtu":1.5}]}`:                    "interfaces.mtu of type int",
		`{"cniVersion":"1.0.0","routes":[{"dst":"0.0.0.0/0","table":99999999999999999999}]}`: "routes.table of type int",
		`[]`: "cannot unmarshal array",
	} {
		_, err := Parse(confWith("1.0.0", prev))
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrDecodingFailure || !strings.Contains(e.Msg, "prevResult") || !strings.Contains(e.Msg, says) {
			t.Errorf("%s: %v, want code 6 saying %q", prev, err, says)
		}
	}
}

// FuzzPrevResult: Parse accepts a prevResult exactly when the CNI library
// reads it (as libcni reads a plugin's result, or as the library's plugins
// read prevResult), and passes on either what the library's conversion
// prints or prevResult as it came, which libcni then reads as the library
// read prevResult.
//
//	go test ./plugins/kmesh-cni/conf -run '^$' -fuzz '^FuzzPrevResult$' -fuzztime=30s
func FuzzPrevResult(f *testing.F) {
	f.Add(uint8(3), []byte(prevResult))
	f.Add(uint8(4), []byte(`{"cniVersion":"1.1.0","interfaces":[{"name":"a","mtu":9000}],"ips":[{"address":"fd00::1/64","gateway":""}],"routes":[{"dst":"::/0","scope":0}],"dns":{"search":[null,"x"]}}`))
	f.Add(uint8(2), []byte(`{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.2/8","interface":0}],"interfaces":[null,{"Name":"x"}]}`))
	f.Add(uint8(1), []byte(`{"cniversion":"0.3.1","ips":[{"address":"10.0.0.2/8"}],"CNIVersion":""}`))
	f.Fuzz(func(t *testing.T, vi uint8, prev []byte) {
		version := SupportedVersions[int(vi)%len(SupportedVersions)]
		if !json.Valid(prev) || bytes.TrimSpace(prev)[0] != '{' {
			return
		}
		c, err := Parse(confWith(version, string(prev)))
		// The library's reading: as libcni reads a result, when that is in
		// the conf's version; else as ParsePrevResult reads it.
		want, libErr := cniversion.NewResult(version, prev)
		if libErr != nil || want.Version() != version {
			pc := types.PluginConf{CNIVersion: version}
			if libErr = json.Unmarshal(prev, &pc.RawPrevResult); libErr == nil {
				libErr = cniversion.ParsePrevResult(&pc)
			}
			want = pc.PrevResult
		}
		if (err == nil) != (libErr == nil) {
			t.Fatalf("%s at %s: kmesh-cni %v, library %v", prev, version, err, libErr)
		}
		if err != nil {
			return
		}
		conv, convErr := want.GetAsVersion(version)
		var out bytes.Buffer
		if err := c.PrintPrevResult(&out); (err == nil) != (convErr == nil) {
			t.Fatalf("%s: passing on: %v, library %v", prev, err, convErr)
		}
		if convErr != nil {
			return
		}
		var converted bytes.Buffer
		if err := conv.PrintTo(&converted); err == nil && bytes.Equal(out.Bytes(), converted.Bytes()) {
			return // converted by the library (what it prints it may not read back)
		}
		// Passed on as it came: libcni reads it as the library read it.
		got, err := create.CreateFromBytes(out.Bytes())
		if err != nil || got.Version() != version {
			t.Fatalf("%s: passed on %s, which the library reads as %v, %v", prev, out.Bytes(), got, err)
		}
		x, _ := json.Marshal(got)
		y, _ := json.Marshal(conv)
		if !bytes.Equal(x, y) {
			t.Fatalf("%s: passed on\n%s\nthe library read\n%s", prev, x, y)
		}
	})
}
