// Command emptyplugin is the benchmarks' control: a chained CNI plugin that
// does no work. ADD answers with its prevResult, every other command
// succeeds. Put where kmesh-cni sits in the chain, what it adds is what any
// plugin written in Go pays before doing anything (exec, the runtime's
// start, reading the config, exit), so TestBenchChainAdd can show how much
// of kmesh-cni's added time is its own work.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
)

func main() {
	switch os.Getenv("CNI_COMMAND") {
	case "ADD":
		if err := add(os.Stdin, os.Stdout); err != nil {
			// CNI error 7: invalid network config.
			b, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "code": 7, "msg": err.Error()})
			os.Stdout.Write(b)
			os.Exit(1)
		}
	case "VERSION":
		os.Stdout.WriteString(`{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}`)
	}
}

// add copies prevResult to the answer as it is: in a chain it is already in
// the network's cniVersion, which is the version the answer must be in.
func add(in io.Reader, out io.Writer) error {
	b, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	var conf struct {
		PrevResult json.RawMessage `json:"prevResult"`
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		return fmt.Errorf("config: %v", err)
	}
	if len(conf.PrevResult) == 0 {
		return fmt.Errorf("config: no prevResult (a chained plugin)")
	}
	_, err = out.Write(conf.PrevResult)
	return err
}
