package proxy

import "strings"

// flags are Envoy's response flags of one request or connection.
type flags uint32

const (
	flagUH  flags = 1 << iota // no healthy upstream
	flagUT                    // upstream request timeout
	flagUF                    // upstream connection failure
	flagUC                    // upstream connection termination
	flagUO                    // upstream overflow (circuit breaker)
	flagNR                    // no route
	flagDI                    // fault delay injected
	flagFI                    // fault abort injected
	flagDC                    // downstream connection termination
	flagURX                   // retries exhausted
	flagNC                    // no cluster found
	flagSI                    // stream idle timeout
	flagUPE                   // upstream protocol error
	flagUR                    // upstream remote reset (HTTP/2 RST_STREAM)
)

// flagNames in Envoy's order of its short flag string.
var flagNames = []struct {
	f    flags
	name string
}{
	{flagUH, "UH"}, {flagUT, "UT"}, {flagUR, "UR"}, {flagUF, "UF"}, {flagUC, "UC"}, {flagUO, "UO"}, {flagNR, "NR"},
	{flagDI, "DI"}, {flagFI, "FI"}, {flagDC, "DC"}, {flagURX, "URX"}, {flagSI, "SI"}, {flagNC, "NC"},
	{flagUPE, "UPE"},
}

// String is Envoy's %RESPONSE_FLAGS%: short names joined by "," or "-".
func (f flags) String() string {
	if f == 0 {
		return "-"
	}
	var b strings.Builder
	for _, n := range flagNames {
		if f&n.f != 0 {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(n.name)
		}
	}
	return b.String()
}
