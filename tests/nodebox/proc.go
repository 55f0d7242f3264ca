package nodebox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/podns"
)

// ProcSpec describes a process to run inside the box.
type ProcSpec struct {
	// Name is for logs and errors.
	Name string
	Argv []string
	// Pod is the pod whose network namespace the process runs in; nil
	// means the node's.
	Pod *Pod
	// InCgroup starts the process inside the box's cgroup, where the data
	// path's programs are attached: its sockets in an enrolled pod go
	// through the mesh. Outside it, the same pod's sockets do not.
	InCgroup bool
	// Cgroup, when set, is the cgroup directory to start in instead (see
	// Box.OutsideCgroup); it overrides InCgroup.
	Cgroup string
	// Env is the whole environment; nil inherits this process's.
	Env []string
	// Output receives stdout and stderr; nil appends them to a log file
	// named after the process in the box's folder.
	Output io.Writer
}

// Proc is a process the box started. Only the box ends it, by its pid.
type Proc struct {
	Spec    ProcSpec
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// Start runs a process in a pod's (or the node's) network namespace and,
// when asked, in the box's cgroup. The process joins the cgroup at creation
// (clone3 with CLONE_INTO_CGROUP) and inherits the namespace from the thread
// that forks it, so /sys stays the host's (unlike `ip netns exec`, which
// remounts it and hides bpffs and cgroupfs). It gets its own process group,
// so a ^C meant for us does not reach it before we stop it in order, and
// SIGKILL if we die.
func (b *Box) Start(spec ProcSpec) (*Proc, error) {
	if len(spec.Argv) == 0 {
		return nil, errors.New("start: no command")
	}
	if spec.Name == "" {
		spec.Name = spec.Argv[0]
	}
	p := &Proc{Spec: spec, done: make(chan struct{})}
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Env = spec.Env
	cmd.Dir = b.Dir
	out := spec.Output
	var logFile *os.File
	if out == nil {
		p.LogPath = b.path(spec.Name + ".log")
		f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(f, "### %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(spec.Argv, " "))
		logFile, out = f, f
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Outside the box's cgroup means where we were before JoinCgroup, not
	// where we are now.
	cg := b.joined
	if spec.InCgroup {
		cg = b.Cgroup
	}
	if spec.Cgroup != "" {
		cg = spec.Cgroup
	}
	if cg != "" {
		fd, err := unix.Open(cg, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			if logFile != nil {
				logFile.Close()
			}
			return nil, fmt.Errorf("open cgroup %s: %w", cg, err)
		}
		defer unix.Close(fd)
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = fd
	}
	ns := b.NodeNSPath
	if spec.Pod != nil {
		ns = spec.Pod.NSPath
	}
	if err := podns.Do(ns, cmd.Start); err != nil {
		if logFile != nil {
			logFile.Close()
		}
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	p.cmd = cmd
	go func() {
		p.waitErr = cmd.Wait()
		if logFile != nil {
			logFile.Close()
		}
		close(p.done)
	}()
	b.mu.Lock()
	// Forget processes that ended long ago (a benchmark starts hundreds).
	b.procs = slices.DeleteFunc(b.procs, func(q *Proc) bool {
		done, _ := q.Exited()
		return done
	})
	b.procs = append(b.procs, p)
	b.mu.Unlock()
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Wait waits for the process to end by itself.
func (p *Proc) Wait() error {
	<-p.done
	return p.waitErr
}

// Kill sends SIGKILL and waits until the process is gone.
func (p *Proc) Kill() error {
	if ok, _ := p.Exited(); ok {
		return nil
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s (pid %d): %w", p.Spec.Name, p.Pid(), err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) still there 10s after SIGKILL", p.Spec.Name, p.Pid())
	}
}

// Stop sends SIGTERM, then SIGKILL when the process is still there after
// grace.
func (p *Proc) Stop(grace time.Duration) error {
	if ok, _ := p.Exited(); ok {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s (pid %d): %w", p.Spec.Name, p.Pid(), err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	return p.Kill()
}

// CPU returns the user and system CPU time the process has used so far
// (from /proc while it runs, from its rusage once it has exited).
func (p *Proc) CPU() (user, sys time.Duration, err error) {
	if ok, _ := p.Exited(); ok {
		return p.cmd.ProcessState.UserTime(), p.cmd.ProcessState.SystemTime(), nil
	}
	return ProcCPU(p.Pid())
}

// clockTicks is USER_HZ, which /proc/<pid>/stat counts in; 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// ProcCPU reads utime and stime of a running process from /proc/<pid>/stat.
func ProcCPU(pid int) (user, sys time.Duration, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// After the name: state(3) ppid ... utime(14) stime(15).
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	tick := time.Second / clockTicks
	return time.Duration(ut) * tick, time.Duration(st) * tick, nil
}
