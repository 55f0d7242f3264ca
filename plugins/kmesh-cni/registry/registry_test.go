package registry_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/internal/fakedaemon"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/registry"
)

func ctx(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

func TestRoundTrip(t *testing.T) {
	d := fakedaemon.Start(t, fakedaemon.Socket(t))
	c, err := registry.Dial(d.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pod := &cniv1.Pod{Name: "web", Namespace: "shop", ContainerId: "c1", NetnsCookie: 9, Enrolled: true}
	if enrolled, err := c.Enroll(ctx(t, 2*time.Second), pod); err != nil || !enrolled {
		t.Fatalf("enroll: %v %v", enrolled, err)
	}
	got, err := c.Pod(ctx(t, 2*time.Second), "c1")
	if err != nil || got.GetNetnsCookie() != 9 {
		t.Fatalf("pod: %v %v", got, err)
	}
	if got, err := c.Pod(ctx(t, 2*time.Second), "other"); err != nil || got != nil {
		t.Fatalf("unknown pod: %v %v", got, err)
	}
	if st, err := c.Status(ctx(t, 2*time.Second)); err != nil || !st.GetReady() || st.GetPods() != 1 {
		t.Fatalf("status: %v %v", st, err)
	}
	if err := c.Release(ctx(t, 2*time.Second), "c1", "", 9); err != nil {
		t.Fatal(err)
	}
	if d.Pod("c1") != nil {
		t.Fatal("released pod still registered")
	}
}

func TestDaemonAbsentFailsAtOnce(t *testing.T) {
	c, err := registry.Dial(fakedaemon.Socket(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.Enroll(ctx(t, 2*time.Second), &cniv1.Pod{ContainerId: "c"})
	if !errors.Is(err, registry.ErrUnreachable) || !strings.Contains(err.Error(), "is the kmesh daemon running") {
		t.Fatalf("error %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("took %v to notice there is no socket", took)
	}
}

func TestHungDaemonIsBoundedByTheContext(t *testing.T) {
	d := fakedaemon.Start(t, fakedaemon.Socket(t))
	d.SetDelay(time.Minute)
	c, err := registry.Dial(d.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.Enroll(ctx(t, 200*time.Millisecond), &cniv1.Pod{ContainerId: "c"})
	if !errors.Is(err, registry.ErrUnreachable) {
		t.Fatalf("error %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("took %v, bound was 200ms", took)
	}
}
