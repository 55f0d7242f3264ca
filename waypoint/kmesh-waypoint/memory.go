package main

import (
	"bufio"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Memory: a waypoint's budget is 40 MiB resident with 1000 services
// (measured by kmesh-bench's L7 memory table: the real binary fed over
// xDS). Where it went, and what each step below bought, is in
// waypoint/proxy/README.md.

// defaultMemoryLimit is the Go runtime's soft memory limit when
// GOMEMLIMIT is not set: the collector runs more often as the heap nears
// it, instead of letting garbage double the live heap (GOGC=100) under
// load. A soft limit: with more live data than this the heap grows past
// it (the runtime caps the collector's CPU share), nothing fails.
const defaultMemoryLimit = 24 << 20

// tuneMemory sets the runtime's defaults the environment leaves open.
func tuneMemory() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
}

// trimmer gives memory back to the system after a configuration change:
// translating a push of a thousand services leaves megabytes of garbage
// (the decoded protos), which the collector frees but the runtime keeps
// mapped for a while. Debounced: one trim per burst of changes.
type trimmer struct {
	mu      sync.Mutex
	t       *time.Timer
	trimmed bool // the binary's pages were released once
}

const trimAfter = time.Second

func (tr *trimmer) changed() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.t == nil {
		tr.t = time.AfterFunc(trimAfter, tr.trim)
		return
	}
	tr.t.Reset(trimAfter)
}

func (tr *trimmer) trim() {
	debug.FreeOSMemory()
	tr.mu.Lock()
	first := !tr.trimmed
	tr.trimmed = true
	tr.mu.Unlock()
	if first {
		releaseBinaryPages()
	}
}

// releaseBinaryPages unmaps the pages of the executable's read-only
// segments (code, read-only data) from this process, once, after start-up
// and the first configuration: start-up (every linked package's init,
// protobuf registering the descriptors of every linked .proto) touches
// most of them, and the kernel's fault-around maps 64 KiB around each page
// touched, so a 38 MB binary sits at ~19 MiB resident before serving a
// request. The pages stay in the page cache (shared, clean); the ones the
// proxy still runs fault back in as they are used. Read-only mappings
// only: MADV_DONTNEED on a private writable one would drop its writes.
func releaseBinaryPages() {
	exe, err := os.Executable()
	if err != nil {
		return
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// start-end perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[5] != exe || strings.Contains(fields[1], "w") {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		_ = madvise(uintptr(start), uintptr(end-start), unix.MADV_DONTNEED)
	}
}

func madvise(addr, length uintptr, advice int) error {
	_, _, errno := unix.Syscall(unix.SYS_MADVISE, addr, length, uintptr(advice))
	if errno != 0 {
		return errno
	}
	return nil
}
