package bootstrap_test

import (
	"context"
	"log/slog"

	"github.com/kmesh-go/kmesh/waypoint/bootstrap"
	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/translate"
)

// How kmesh-waypoint runs from --config-file: the file's listeners as
// written (translate.Options{} has no dispatch listener), every good
// version handed to the engine.
func Example() {
	apply := func(*model.Snapshot) error { return nil } // the engine's Apply
	go func() {
		if err := bootstrap.Watch(context.Background(), "conf/waypoint-demo.yaml", translate.Options{}, apply, slog.Default()); err != nil {
			slog.Error("config file", "err", err)
		}
	}()
}
