package proxy

import (
	"io"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Envoy's tcp_proxy: idle_timeout 0s turns the idle timeout off (a
// DestinationRule's tcp.idleTimeout: 0s); only an unset one is 1 h.
func TestTCPIdleTimeoutDisabled(t *testing.T) {
	defer func(d time.Duration) { tcpIdleDefault = d }(tcpIdleDefault)
	tcpIdleDefault = 100 * time.Millisecond
	echo := tcpEcho(t, "127.0.0.1:0")
	te := newTestEngine(t, Options{})
	te.apply(tcpSnapshot(&model.TCPProxy{Cluster: "echo", IdleTimeout: model.NoTimeout}, model.ServiceRef{},
		&model.Cluster{Name: "echo", Endpoints: endpoints(echo)}))
	conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 4)
	for i := range 2 {
		if i == 1 {
			time.Sleep(400 * time.Millisecond)
		}
		io.WriteString(conn, "ping")
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Fatalf("round %d: %v (closed while idle though the idle timeout is off)", i, err)
		}
	}
}
