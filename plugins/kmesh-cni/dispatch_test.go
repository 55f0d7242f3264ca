package main

import (
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// addArgs asks for what the CNI library's dispatcher asks for on ADD, with
// its codes and messages.
func TestAddArgsAsSkel(t *testing.T) {
	full := map[string]string{
		"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c-1.x_y", "CNI_NETNS": "/var/run/netns/p", "CNI_IFNAME": "eth0",
		"CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAME=a", "CNI_NETNS_OVERRIDE": "1",
	}
	without := func(drop ...string) map[string]string {
		m := map[string]string{}
		for k, v := range full {
			m[k] = v
		}
		for _, d := range drop {
			delete(m, d)
		}
		return m
	}
	with := func(k, v string) map[string]string {
		m := without()
		m[k] = v
		return m
	}
	cases := []struct {
		name string
		env  map[string]string
		code uint
		says string
	}{
		{"all there", full, 0, ""},
		{"optional ones left out", without("CNI_ARGS", "CNI_NETNS_OVERRIDE"), 0, ""},
		{"missing path and netns", without("CNI_PATH", "CNI_NETNS"), types.ErrInvalidEnvironmentVariables, "required env variables [CNI_NETNS,CNI_PATH] missing"},
		{"missing container id", without("CNI_CONTAINERID"), types.ErrInvalidEnvironmentVariables, "[CNI_CONTAINERID]"},
		{"bad container id", with("CNI_CONTAINERID", "-starts-with-dash"), types.ErrInvalidEnvironmentVariables, "invalid characters in containerID"},
		{"bad container id before a missing path", func() map[string]string { m := with("CNI_CONTAINERID", "a/b"); delete(m, "CNI_PATH"); return m }(),
			types.ErrInvalidEnvironmentVariables, "invalid characters in containerID"},
		{"interface name too long", with("CNI_IFNAME", "a-very-long-interface-name"), types.ErrInvalidEnvironmentVariables, "too long"},
		{"interface name with a slash", with("CNI_IFNAME", "eth/0"), types.ErrInvalidEnvironmentVariables, "interface name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args, err := addArgs(func(k string) string { return tc.env[k] }, strings.NewReader("stdin"))
			if tc.code == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if args.ContainerID != tc.env["CNI_CONTAINERID"] || args.Netns != tc.env["CNI_NETNS"] || args.IfName != "eth0" ||
					args.Path != "/opt/cni/bin" || args.Args != tc.env["CNI_ARGS"] || args.NetnsOverride != tc.env["CNI_NETNS_OVERRIDE"] ||
					string(args.StdinData) != "stdin" {
					t.Fatalf("args %+v", args)
				}
				return
			}
			if err == nil || err.Code != tc.code || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("got %v, want code %d saying %q", err, tc.code, tc.says)
			}
		})
	}
}
