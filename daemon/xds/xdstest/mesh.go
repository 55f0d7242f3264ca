package xdstest

import (
	"bufio"
	"fmt"
	"io"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"
	"istio.io/istio/pkg/workloadapi"
)

// Named is one Address resource under its xDS name.
type Named struct {
	Name    string
	Address *workloadapi.Address
}

// Mesh builds the same mesh on every call: services spread over 100
// namespaces, each with one VIP (port 80 -> 8080) and perService healthy
// pods of its own (about 250 bytes of JSON each: 10,000 x 10 is a 27 MB
// file). Services come first, each followed by its pods. It is
// the scale benchmark's mesh, fed to the daemon over xDS (Resources) and
// as a --config-file (WriteConfigFile).
func Mesh(services, perService int) []Named {
	out := make([]Named, 0, services*(1+perService))
	for i := range services {
		ns := fmt.Sprintf("ns%d", i%100)
		name := fmt.Sprintf("svc%d", i)
		vip := fmt.Sprintf("10.%d.%d.%d", 96+i/65536, (i/256)%256, i%256)
		n, s := Service(ns, name, []string{vip}, map[uint32]uint32{80: 8080})
		out = append(out, Named{n, s})
		key := fmt.Sprintf("%s/%s.%s.svc.cluster.local", ns, name, ns)
		for j := range perService {
			k := i*perService + j
			ip := fmt.Sprintf("10.%d.%d.%d", 128+k/65536, (k/256)%256, k%256)
			n, w := Workload(fmt.Sprintf("Kubernetes//Pod/%s/%s-%d", ns, name, j), ns, fmt.Sprintf("%s-%d", name, j), []string{ip}, []string{key},
				func(w *workloadapi.Workload) {
					w.Node = fmt.Sprintf("node-%d", k%50)
					w.ServiceAccount = name
				})
			out = append(out, Named{n, w})
		}
	}
	return out
}

// Resources is the mesh as Set takes it.
func Resources(mesh []Named) map[string]types.Resource {
	out := make(map[string]types.Resource, len(mesh))
	for _, r := range mesh {
		out[r.Name] = r.Address
	}
	return out
}

// WriteConfigFile writes the mesh as kmesh-daemon's --config-file reads
// it: JSON (which is YAML) with each Address in protojson, one per line.
func WriteConfigFile(w io.Writer, mesh []Named) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	bw.WriteString("{\"addresses\": [\n")
	for i, r := range mesh {
		b, err := protojson.Marshal(r.Address)
		if err != nil {
			return fmt.Errorf("%s: %w", r.Name, err)
		}
		if i > 0 {
			bw.WriteString(",\n")
		}
		bw.Write(b)
	}
	bw.WriteString("\n],\n\"authorizations\": []}\n")
	return bw.Flush()
}
