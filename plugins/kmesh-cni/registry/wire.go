//go:build !kmesh_grpc_client

package registry

import (
	"errors"
	"fmt"
)

// This file encodes and decodes the PodRegistry messages (api/cni/v1,
// cni.proto) by hand, so the plugin links no protobuf package: the
// runtime's package initialisation and the lazy set-up of a message type
// on first use cost a process that lives for one call about 0.5 ms, and
// even protowire's dependencies initialise at start. The wire format is
// the protobuf encoding (varints, length-delimited fields); the field
// numbers below are cni.proto's. wire_test.go checks every message
// against the generated types both ways, and fails when a field is added
// to the proto and not here.

// Wire types of the protobuf encoding.
type wireType uint8

const (
	varintType  wireType = 0
	fixed64Type wireType = 1
	bytesType   wireType = 2
	fixed32Type wireType = 5
)

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func sizeVarint(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// consumeVarint returns the varint at the start of b and its length, or
// a length of 0 if b does not start with a valid one.
func consumeVarint(b []byte) (uint64, int) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		if i == 9 && b[i] > 1 {
			return 0, 0 // more than 64 bits
		}
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i] < 0x80 {
			return v, i + 1
		}
	}
	return 0, 0
}

func appendTag(b []byte, num int, t wireType) []byte {
	return appendVarint(b, uint64(num)<<3|uint64(t))
}

// Proto3 leaves fields at their zero value out of the encoding.

func appendString(b []byte, num int, s string) []byte {
	if s == "" {
		return b
	}
	b = appendTag(b, num, bytesType)
	b = appendVarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendUint(b []byte, num int, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = appendTag(b, num, varintType)
	return appendVarint(b, v)
}

func appendBool(b []byte, num int, v bool) []byte {
	if !v {
		return b
	}
	return appendUint(b, num, 1)
}

// appendMessage appends a length-delimited sub-message that enc writes.
func appendMessage(b []byte, num int, enc func([]byte) []byte) []byte {
	b = appendTag(b, num, bytesType)
	// Reserve one length byte, the usual case, and move the body if the
	// length needs more.
	at := len(b)
	b = append(b, 0)
	b = enc(b)
	n := len(b) - at - 1
	if size := sizeVarint(uint64(n)); size > 1 {
		b = append(b, make([]byte, size-1)...)
		copy(b[at+size:], b[at+1:at+1+n])
	}
	appendVarint(b[:at], uint64(n))
	return b
}

func (i *Interface) append(b []byte) []byte {
	b = appendString(b, 1, i.Name)
	b = appendString(b, 2, i.Mac)
	return appendString(b, 3, i.Sandbox)
}

func (p *Pod) append(b []byte) []byte {
	b = appendString(b, 1, p.Name)
	b = appendString(b, 2, p.Namespace)
	b = appendString(b, 3, p.UID)
	b = appendString(b, 4, p.ContainerID)
	b = appendString(b, 5, p.NetnsPath)
	b = appendUint(b, 6, p.NetnsCookie)
	for _, ip := range p.IPs {
		// Repeated strings are written even when empty.
		b = appendTag(b, 7, bytesType)
		b = appendVarint(b, uint64(len(ip)))
		b = append(b, ip...)
	}
	for i := range p.Interfaces {
		b = appendMessage(b, 8, p.Interfaces[i].append)
	}
	b = appendString(b, 9, p.HostVeth)
	b = appendBool(b, 10, p.Enrolled)
	b = appendString(b, 11, p.Reason)
	b = appendString(b, 12, p.CgroupPath)
	b = appendUint(b, 13, p.CgroupID)
	return appendString(b, 14, p.CNIIfname)
}

// encodeEnroll is message EnrollPodRequest.
func encodeEnroll(p *Pod) []byte {
	return appendMessage(nil, 1, p.append)
}

// encodeRelease is message ReleasePodRequest.
func encodeRelease(containerID, netns string, cookie uint64) []byte {
	b := appendString(nil, 1, containerID)
	b = appendString(b, 2, netns)
	return appendUint(b, 3, cookie)
}

// encodeDecide is message DecidePodRequest.
func encodeDecide(namespace, name, uid string) []byte {
	b := appendString(nil, 1, namespace)
	b = appendString(b, 2, name)
	return appendString(b, 3, uid)
}

func decodeDecision(b []byte) (*Decision, error) {
	d := &Decision{}
	err := fields(b, func(num int, typ wireType, v uint64, data []byte) error {
		switch num {
		case 1, 2:
			if err := want(num, typ, varintType); err != nil {
				return err
			}
			if num == 1 {
				d.Known = v != 0
			} else {
				d.Enroll = v != 0
			}
		case 3:
			if err := want(num, typ, bytesType); err != nil {
				return err
			}
			d.Reason = string(data)
		}
		return nil
	})
	return d, err
}

var errMalformed = errors.New("malformed protobuf")

// fields calls fn for every field of message b with its number, wire
// type and the field's value: the varint for varints, the bytes for
// length-delimited fields; other types are skipped. Unknown fields are
// for fn to ignore, as protobuf readers must.
func fields(b []byte, fn func(num int, typ wireType, v uint64, data []byte) error) error {
	for len(b) > 0 {
		tag, n := consumeVarint(b)
		num, typ := tag>>3, wireType(tag&7)
		if n == 0 || num == 0 || num > 1<<29-1 {
			return fmt.Errorf("%w: bad field tag", errMalformed)
		}
		b = b[n:]
		var v uint64
		var data []byte
		switch typ {
		case varintType:
			v, n = consumeVarint(b)
		case bytesType:
			var size uint64
			size, n = consumeVarint(b)
			if n > 0 && size <= uint64(len(b)-n) {
				data, n = b[n:n+int(size)], n+int(size)
			} else {
				n = 0
			}
		case fixed64Type:
			n = 8
		case fixed32Type:
			n = 4
		default:
			return fmt.Errorf("%w: field %d has wire type %d, which kmesh-cni does not read", errMalformed, num, typ)
		}
		if n == 0 || n > len(b) {
			return fmt.Errorf("%w: field %d is truncated", errMalformed, num)
		}
		b = b[n:]
		if err := fn(int(num), typ, v, data); err != nil {
			return err
		}
	}
	return nil
}

// want checks a known field's wire type, as the generated decoder does.
func want(num int, got, want wireType) error {
	if got != want {
		return fmt.Errorf("%w: field %d has wire type %d, want %d", errMalformed, num, got, want)
	}
	return nil
}

func decodeInterface(b []byte) (Interface, error) {
	var i Interface
	err := fields(b, func(num int, typ wireType, _ uint64, data []byte) error {
		var s *string
		switch num {
		case 1:
			s = &i.Name
		case 2:
			s = &i.Mac
		case 3:
			s = &i.Sandbox
		default:
			return nil
		}
		if err := want(num, typ, bytesType); err != nil {
			return err
		}
		*s = string(data)
		return nil
	})
	return i, err
}

func decodePod(b []byte) (*Pod, error) {
	p := &Pod{}
	err := fields(b, func(num int, typ wireType, v uint64, data []byte) error {
		var s *string
		switch num {
		case 1:
			s = &p.Name
		case 2:
			s = &p.Namespace
		case 3:
			s = &p.UID
		case 4:
			s = &p.ContainerID
		case 5:
			s = &p.NetnsPath
		case 9:
			s = &p.HostVeth
		case 11:
			s = &p.Reason
		case 12:
			s = &p.CgroupPath
		case 14:
			s = &p.CNIIfname
		case 6, 10, 13:
			if err := want(num, typ, varintType); err != nil {
				return err
			}
			switch num {
			case 6:
				p.NetnsCookie = v
			case 10:
				p.Enrolled = v != 0
			case 13:
				p.CgroupID = v
			}
			return nil
		case 7:
			if err := want(num, typ, bytesType); err != nil {
				return err
			}
			p.IPs = append(p.IPs, string(data))
			return nil
		case 8:
			if err := want(num, typ, bytesType); err != nil {
				return err
			}
			i, err := decodeInterface(data)
			if err != nil {
				return err
			}
			p.Interfaces = append(p.Interfaces, i)
			return nil
		default:
			return nil
		}
		if err := want(num, typ, bytesType); err != nil {
			return err
		}
		*s = string(data)
		return nil
	})
	return p, err
}

// decodeBool reads field 1 of a message whose only field is a bool:
// EnrollPodResponse.enrolled, ReleasePodResponse.known.
func decodeBool(b []byte) (bool, error) {
	var out bool
	err := fields(b, func(num int, typ wireType, v uint64, _ []byte) error {
		if num != 1 {
			return nil
		}
		if err := want(num, typ, varintType); err != nil {
			return err
		}
		out = v != 0
		return nil
	})
	return out, err
}

// decodePods is message ListPodsResponse.
func decodePods(b []byte) ([]*Pod, error) {
	var pods []*Pod
	err := fields(b, func(num int, typ wireType, _ uint64, data []byte) error {
		if num != 1 {
			return nil
		}
		if err := want(num, typ, bytesType); err != nil {
			return err
		}
		p, err := decodePod(data)
		if err != nil {
			return err
		}
		pods = append(pods, p)
		return nil
	})
	return pods, err
}

// decodeStatus is message StatusResponse.
func decodeStatus(b []byte) (*Status, error) {
	st := &Status{}
	err := fields(b, func(num int, typ wireType, v uint64, data []byte) error {
		switch num {
		case 2, 5:
			if err := want(num, typ, bytesType); err != nil {
				return err
			}
			if num == 2 {
				st.Message = string(data)
			} else {
				st.Version = string(data)
			}
		case 1, 3, 4, 6:
			if err := want(num, typ, varintType); err != nil {
				return err
			}
			switch num {
			case 1:
				st.Ready = v != 0
			case 3:
				st.Pods = uint32(v)
			case 4:
				st.EnrolledPods = uint32(v)
			case 6:
				st.MeshSynced = v != 0
			}
		}
		return nil
	})
	return st, err
}
