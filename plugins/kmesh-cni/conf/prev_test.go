package conf

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
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

func TestPrevResultRefusedWithWhatIsWrong(t *testing.T) {
	for prev, says := range map[string]string{
		`{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1"}]}`:                              `ips[0].address "10.0.0.1"`,
		`{"cniVersion":"1.0.0","ips":[{"address":null}]}`:                                    "ips[0].address",
		`{"cniVersion":"1.0.0","ips":{}}`:                                                    "ips must be an array",
		`{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mtu":"1500"}]}`:                 "interfaces[0].mtu must be an integer",
		`{"cniVersion":"1.0.0","routes":[{"dst":"0.0.0.0/0","gw":"nonsense"}]}`:              `routes[0].gw "nonsense"`,
		`{"cniVersion":"1.0.0","dns":{"nameservers":"10.96.0.10"}}`:                          "dns.nameservers must be an array",
		`{"cniVersion":"1.0.0","IPS":[{"address":"x"}]}`:                                     `IPS[0].address "x"`,
		`{"cniVersion":"0.4.0","ips":[{"address":"10.0.0.1/8"}]}`:                            "0.4.0",
		`{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mtu":1.5}]}`:                    "must be an integer",
		`{"cniVersion":"1.0.0","routes":[{"dst":"0.0.0.0/0","table":99999999999999999999}]}`: "must be an integer",
	} {
		_, err := Parse(confWith("1.0.0", prev))
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrDecodingFailure || !strings.Contains(e.Msg, "prevResult") || !strings.Contains(e.Msg, says) {
			t.Errorf("%s: %v, want code 2 saying %q", prev, err, says)
		}
	}
}

// libraryAccepts is how kmesh-cni read prevResult before it read JSON by
// hand: the conf through encoding/json into the library's PluginConf, then
// the library's ParsePrevResult.
func libraryAccepts(confVersion string, prev []byte) (types.Result, error) {
	var raw map[string]any
	if err := json.Unmarshal(prev, &raw); err != nil {
		return nil, err
	}
	pc := types.PluginConf{CNIVersion: confVersion, RawPrevResult: raw}
	if err := cniversion.ParsePrevResult(&pc); err != nil {
		return nil, err
	}
	return pc.PrevResult, nil
}

// FuzzPrevResult holds readPrev to the CNI library: the same prevResults
// accepted, and what is passed on reads back as what ADD printed before.
// (The library's own conversion to its current version panics on a null
// interface; ADD no longer uses it.)
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
		lib, libErr := libraryAccepts(version, prev)
		if (err == nil) != (libErr == nil) {
			t.Fatalf("%s at %s: kmesh-cni %v, library %v", prev, version, err, libErr)
		}
		if err != nil {
			return
		}
		// Before, ADD printed the library's result at the conf's version.
		want, wantErr := lib.GetAsVersion(version)
		var out bytes.Buffer
		if err := c.PrintPrevResult(&out); (err == nil) != (wantErr == nil) {
			t.Fatalf("%s: passing on: %v, library %v", prev, err, wantErr)
		}
		if wantErr != nil {
			return
		}
		var before bytes.Buffer
		if err := want.PrintTo(&before); err != nil || bytes.Equal(out.Bytes(), before.Bytes()) {
			return // converted as before (also when before was not readable)
		}
		// Passed on as it came: it must read as what ADD printed before.
		again, err := cniversion.NewResult(version, out.Bytes())
		if err != nil {
			t.Fatalf("%s: passed on %s, which the library cannot read: %v", prev, out.Bytes(), err)
		}
		a, _ := json.Marshal(again)
		b, _ := json.Marshal(want)
		if !bytes.Equal(a, b) {
			t.Fatalf("%s: passed on\n%s\nbefore\n%s", prev, a, b)
		}
	})
}
