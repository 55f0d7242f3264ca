package rtlink

import (
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRejectsBadNamesWithoutAsking(t *testing.T) {
	for _, name := range []string{"", "a-name-longer-than-fifteen"} {
		if _, err := ByName(name); !errors.Is(err, ErrNotFound) {
			t.Errorf("%q: %v", name, err)
		}
	}
	if _, err := ByIndex(0); !errors.Is(err, ErrNotFound) {
		t.Errorf("index 0: %v", err)
	}
}

func TestParseRejectsMalformedAnswers(t *testing.T) {
	msg := func(typ uint16, body []byte) []byte {
		b := make([]byte, unix.SizeofNlMsghdr)
		binary.NativeEndian.PutUint32(b, uint32(len(b)+len(body)))
		binary.NativeEndian.PutUint16(b[4:], typ)
		return append(b, body...)
	}
	errno := func(e unix.Errno) []byte { return binary.NativeEndian.AppendUint32(nil, uint32(-int32(e))) }
	link := make([]byte, unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(link[4:], 7)
	link = appendAttr(link, unix.IFLA_IFNAME, []byte("veth1\x00"))
	link = appendAttr(link, unix.IFLA_LINKINFO|unix.NLA_F_NESTED, appendAttr(nil, unix.IFLA_INFO_KIND, []byte("veth\x00")))
	link = appendAttr(link, unix.IFLA_LINK, binary.NativeEndian.AppendUint32(nil, 3))

	if l, done, err := parse(msg(unix.RTM_NEWLINK, link)); err != nil || !done || l != (Link{Index: 7, Name: "veth1", Kind: "veth", Peer: 3}) {
		t.Fatalf("%+v %v %v", l, done, err)
	}
	if _, _, err := parse(msg(unix.NLMSG_ERROR, errno(unix.ENODEV))); !errors.Is(err, ErrNotFound) {
		t.Errorf("ENODEV: %v", err)
	}
	if _, _, err := parse(msg(unix.NLMSG_ERROR, errno(unix.EPERM))); !errors.Is(err, unix.EPERM) {
		t.Errorf("EPERM: %v", err)
	}
	for name, b := range map[string][]byte{
		"short header":    {1, 2, 3},
		"length past end": msg(unix.RTM_NEWLINK, link)[:20],
		"short ifinfomsg": msg(unix.RTM_NEWLINK, link[:8]),
		"attr past end":   msg(unix.RTM_NEWLINK, append(link[:unix.SizeofIfInfomsg:unix.SizeofIfInfomsg], 40, 0, 3, 0)),
		"short IFLA_LINK": msg(unix.RTM_NEWLINK, appendAttr(link[:unix.SizeofIfInfomsg:unix.SizeofIfInfomsg], unix.IFLA_LINK, []byte{1})),
		"short error":     msg(unix.NLMSG_ERROR, []byte{1}),
	} {
		l, done, err := parse(b)
		if name == "short header" {
			// Too short to be a message: nothing in it.
			if err != nil || done {
				t.Errorf("%s: %+v %v %v", name, l, done, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: no error (%+v %v)", name, l, done)
		}
	}
}
