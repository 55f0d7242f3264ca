package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"golang.org/x/sys/unix"
)

// addMain serves ADD without the CNI library's dispatcher (skel), which
// decodes the conf twice by reflection before the plugin reads it (~0.2 ms
// of a process that lives ~5 ms). It checks what skel checks for ADD, with
// the same codes: the environment (the same variables required, the same
// validation of the container id and interface name, the same message for
// missing ones), the conf (conf.Parse: JSON, version, name), and that
// CNI_NETNS is not the plugin's own namespace; that last one before ADD
// does anything rather than after, as skel did. Every other command goes
// through skel.
func addMain(stdin io.Reader) *types.Error {
	args, err := addArgs(os.Getenv, stdin)
	if err != nil {
		return err
	}
	if override := args.NetnsOverride; !strings.EqualFold(override, "true") && override != "1" {
		if same, err := sameNetnsAsPlugin(args.Netns); err != nil {
			return err
		} else if same {
			return types.NewError(types.ErrInvalidNetNS, "plugin's netns and netns from CNI_NETNS should not be the same", "")
		}
	}
	if err := cmdAdd(args); err != nil {
		var e *types.Error
		if errors.As(err, &e) {
			return e
		}
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	return nil
}

// addArgs reads ADD's environment and stdin as skel does.
func addArgs(getenv func(string) string, stdin io.Reader) (*skel.CmdArgs, *types.Error) {
	args := &skel.CmdArgs{}
	vars := []struct {
		name     string
		val      *string
		required bool
		validate func(string) *types.Error
	}{
		{"CNI_COMMAND", new(string), true, nil},
		{"CNI_CONTAINERID", &args.ContainerID, true, utils.ValidateContainerID},
		{"CNI_NETNS", &args.Netns, true, nil},
		{"CNI_IFNAME", &args.IfName, true, utils.ValidateInterfaceName},
		{"CNI_ARGS", &args.Args, false, nil},
		{"CNI_PATH", &args.Path, true, nil},
		{"CNI_NETNS_OVERRIDE", &args.NetnsOverride, false, nil},
	}
	var missing []string
	for _, v := range vars {
		*v.val = getenv(v.name)
		if *v.val == "" {
			if v.required {
				missing = append(missing, v.name)
			}
		} else if v.validate != nil {
			if err := v.validate(*v.val); err != nil {
				return nil, err
			}
		}
	}
	if len(missing) > 0 {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("required env variables [%s] missing", strings.Join(missing, ",")), "")
	}
	b, err := io.ReadAll(stdin)
	if err != nil {
		return nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("error reading from stdin: %v", err), "")
	}
	args.StdinData = b
	return args, nil
}

// sameNetnsAsPlugin tells whether path is the namespace the plugin runs
// in. A path that cannot be opened is not (ADD reports it itself).
func sameNetnsAsPlugin(path string) (bool, *types.Error) {
	var target, self unix.Stat_t
	if err := unix.Stat(path, &target); err != nil {
		return false, nil
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil {
		return false, types.NewError(types.ErrInvalidNetNS, "get plugin's netns failed", "")
	}
	return target.Dev == self.Dev && target.Ino == self.Ino, nil
}
