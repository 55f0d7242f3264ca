package podtc

import (
	"errors"
	"testing"

	"github.com/vishvananda/netns"
)

// In the caller's own namespace an interface is named by one ioctl; a
// missing one is errLinkGone. (Every namespace has lo, index 1.)
func TestLinkNameInTheCallersNamespace(t *testing.T) {
	c := &tcConn{ns: netns.None()}
	if name, err := c.linkName(1); err != nil || name != "lo" {
		t.Fatalf("interface 1: %q %v, want lo", name, err)
	}
	if _, err := c.linkName(1 << 30); !errors.Is(err, errLinkGone) {
		t.Fatalf("a missing interface: %v, want errLinkGone", err)
	}
}
