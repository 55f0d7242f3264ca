package xds

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/kmesh-go/kmesh/daemon/model"
)

// Decode turns one resource of a type into the model, validating it.
func Decode(typeURL string, r Resource) (model.Resource, error) {
	switch typeURL {
	case TypeAddress:
		var a workloadapi.Address
		if err := proto.Unmarshal(r.Body.GetValue(), &a); err != nil {
			return model.Resource{}, fmt.Errorf("%s: cannot decode istio.workload.Address: %v", r.Name, err)
		}
		s, w, err := model.FromAddress(&a)
		if err != nil {
			return model.Resource{}, err
		}
		return model.Resource{Name: r.Name, Service: s, Workload: w}, nil
	case TypeAuthorization:
		var a security.Authorization
		if err := proto.Unmarshal(r.Body.GetValue(), &a); err != nil {
			return model.Resource{}, fmt.Errorf("%s: cannot decode istio.security.Authorization: %v", r.Name, err)
		}
		p, err := model.FromAuthorization(&a)
		if err != nil {
			return model.Resource{}, err
		}
		return model.Resource{Name: r.Name, Policy: p}, nil
	}
	return model.Resource{}, fmt.Errorf("%s: unsupported type %s", r.Name, typeURL)
}
