package testbed

import (
	"sync"
	"sync/atomic"
	"testing"
)

// Repeat has workers goroutines call try over and over until stop is
// called, or the test ends (a test that fails before calling stop leaves
// no goroutine dialing into the next test's network: the cleanup runs
// before those registered earlier, such as the fixture's). stop waits for
// the workers and returns how many tries succeeded and failed, and the
// first failure's text. stop may be called more than once.
func Repeat(t testing.TB, workers int, try func() error) (stop func() (ok, failed int64, first string)) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var okN, failN atomic.Int64
	var firstErr atomic.Value
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				if err := try(); err != nil {
					failN.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				} else {
					okN.Add(1)
				}
			}
		}()
	}
	halt := sync.OnceFunc(func() { close(done); wg.Wait() })
	t.Cleanup(halt)
	return func() (int64, int64, string) {
		halt()
		s, _ := firstErr.Load().(string)
		return okN.Load(), failN.Load(), s
	}
}
