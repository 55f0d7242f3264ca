package xds

import (
	"fmt"
	"log/slog"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/kmesh-go/kmesh/daemon/model"
)

// DecodeBatch decodes a run of resources of one type into out and errs
// (as long as in). Every message of the run is unmarshalled before any is
// converted, so the model objects, which stay, are allocated side by side
// rather than between the messages, which go: a page that keeps one live
// object among garbage stays resident.
func DecodeBatch(typeURL string, in []Resource, out []model.Resource, errs []error) {
	switch typeURL {
	case TypeAddress:
		msgs := make([]workloadapi.Address, len(in))
		for i := range in {
			if err := proto.Unmarshal(in[i].Body.GetValue(), &msgs[i]); err != nil {
				errs[i] = fmt.Errorf("%s: cannot decode istio.workload.Address: %v", in[i].Name, err)
			}
		}
		for i := range in {
			if errs[i] != nil {
				continue
			}
			s, w, err := model.FromAddress(&msgs[i])
			if err != nil {
				errs[i] = err
				continue
			}
			if w != nil && w.UID == in[i].Name {
				// One copy of the name: the client keeps in[i].Name for
				// its versions anyway.
				w.UID = in[i].Name
			}
			out[i] = model.Resource{Name: in[i].Name, Service: s, Workload: w}
		}
	case TypeAuthorization:
		msgs := make([]security.Authorization, len(in))
		for i := range in {
			if err := proto.Unmarshal(in[i].Body.GetValue(), &msgs[i]); err != nil {
				errs[i] = fmt.Errorf("%s: cannot decode istio.security.Authorization: %v", in[i].Name, err)
			}
		}
		for i := range in {
			if errs[i] != nil {
				continue
			}
			p, err := model.FromAuthorization(&msgs[i])
			if err != nil {
				errs[i] = err
				continue
			}
			if len(p.Warnings) > 0 {
				// Accepted (not NACKed: refusing would drop the whole
				// policy), with the bad matches made to fail closed.
				slog.Warn("authorization values ignored", "policy", in[i].Name, "problems", p.Warnings)
			}
			out[i] = model.Resource{Name: in[i].Name, Policy: p}
		}
	default:
		for i := range in {
			errs[i] = fmt.Errorf("%s: unsupported type %s", in[i].Name, typeURL)
		}
	}
}
