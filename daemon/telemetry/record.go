package telemetry

import (
	"encoding/binary"
	"fmt"

	"github.com/kmesh-go/kmesh/bpf/layout"
)

// recordSize is sizeof(struct km_conn_event).
const recordSize = 136

// decode reads one km_conn_event (little-endian, as the kernel wrote it).
// Hand-written rather than reflection-based: it runs for every connection.
func decode(b []byte, e *layout.ConnEvent) error {
	if len(b) < recordSize {
		return fmt.Errorf("connection record of %d bytes, want %d", len(b), recordSize)
	}
	le := binary.LittleEndian
	c := &e.Conn
	c.Cookie = le.Uint64(b[0:])
	c.StartNs = le.Uint64(b[8:])
	c.RedirSent = le.Uint64(b[16:])
	copy(c.Local[:], b[24:40])
	copy(c.Remote[:], b[40:56])
	copy(c.Orig[:], b[56:72])
	c.LocalPort = le.Uint16(b[72:])
	c.RemotePort = le.Uint16(b[74:])
	c.OrigPort = le.Uint16(b[76:])
	c.Role = b[78]
	c.Flags = b[79]
	c.ServiceID = le.Uint32(b[80:])
	c.WorkloadID = le.Uint32(b[84:])
	c.AckedBase = le.Uint32(b[88:])
	c.Pad = le.Uint32(b[92:])
	e.NowNs = le.Uint64(b[96:])
	e.BytesSent = le.Uint64(b[104:])
	e.BytesReceived = le.Uint64(b[112:])
	e.SRTTus = le.Uint32(b[120:])
	e.TotalRetrans = le.Uint32(b[124:])
	e.Type = b[128]
	e.End = b[129]
	e.OldState = b[130]
	e.Pad = b[131]
	e.SkErr = le.Uint32(b[132:])
	return nil
}

// endName is how the access log and /debug/connections say how a
// connection ended.
func endName(end uint8) string {
	switch end {
	case layout.EndNone:
		return ""
	case layout.EndFIN:
		return "closed"
	case layout.EndReset:
		return "reset"
	case layout.EndAbort:
		return "aborted"
	case layout.EndTimeout:
		return "timeout"
	}
	return "error"
}

// responseFlags maps how a connection ended to Envoy's response flags:
// "-" for an orderly close; UC (upstream connection termination) when the
// source reports an abnormal end, DC (downstream connection termination)
// when the destination does.
func responseFlags(r Reporter, end uint8) string {
	if end == layout.EndFIN || end == layout.EndNone {
		return noFlags
	}
	if r == ReporterSource {
		return "UC"
	}
	return "DC"
}
