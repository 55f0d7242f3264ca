package telemetry

import (
	"fmt"
	"unsafe"

	"github.com/kmesh-go/kmesh/bpf/layout"
)

// recordSize is sizeof(struct km_conn_event).
const recordSize = int(unsafe.Sizeof(layout.ConnEvent{}))

// decode reads one km_conn_event as the kernel wrote it: in this host's
// layout, which layout.ConnEvent is (generated from the object's BTF), so
// it is one copy. It runs for every connection: no reflection.
func decode(b []byte, e *layout.ConnEvent) error {
	if len(b) < recordSize {
		return fmt.Errorf("connection record of %d bytes, want %d", len(b), recordSize)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(e)), recordSize), b)
	return nil
}

// endName is how the access log and /debug/connections say how a
// connection ended.
func endName(end layout.ConnEnd) string {
	switch end {
	case layout.EndNone:
		return ""
	case layout.EndFin:
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
func responseFlags(r Reporter, end layout.ConnEnd) string {
	if end == layout.EndFin || end == layout.EndNone {
		return noFlags
	}
	if r == ReporterSource {
		return "UC"
	}
	return "DC"
}
