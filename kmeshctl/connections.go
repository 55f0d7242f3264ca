package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kmesh-go/kmesh/daemon/admin"
)

func who(e admin.Endpoint) string {
	if e.Workload == "" {
		return e.Address
	}
	return e.Namespace + "/" + e.Workload
}

// service names what the client dialled: the service, else the address.
func service(e *admin.Connection) string {
	switch {
	case e.Service != "":
		return e.Service
	case e.Dialled != "":
		return e.Dialled
	}
	return "-"
}

func (c client) connections() ([]admin.Connection, error) {
	var es []admin.Connection
	return es, c.getJSON("/debug/connections", &es)
}

// showConnections prints the open connection ends.
func (c client) showConnections() error {
	es, err := c.connections()
	if err != nil {
		return err
	}
	if c.json {
		return c.writeJSON(es)
	}
	w := tabwriter.NewWriter(c.out, 0, 2, 2, ' ', 0)
	fmt.Fprintln(w, "REPORTER\tSOURCE\tDESTINATION\tSERVICE\tREQUEST\tRESPONSE\tAGE\tRTT\tRETRANS\tACCEL")
	for _, e := range es {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%v\n", e.Reporter,
			who(e.Source), who(e.Destination), service(&e), size(e.RequestBytes), size(e.ResponseBytes),
			time.Duration(e.DurationMs*float64(time.Millisecond)).Round(time.Second), rtt(e.RTTMicros), e.Retransmits, e.Accelerated)
	}
	return w.Flush()
}

// top redraws the open connections every interval, busiest first, with
// their byte rates since the previous round; rounds 0 means until ^C.
func (c client) top(interval time.Duration, rounds int) error {
	prev := map[uint64]uint64{}
	last := time.Now()
	for i := 0; rounds == 0 || i < rounds; i++ {
		if i > 0 {
			time.Sleep(interval)
		}
		es, err := c.connections()
		if err != nil {
			return err
		}
		now := time.Now()
		secs := now.Sub(last).Seconds()
		last = now
		type row struct {
			e    admin.Connection
			rate float64
		}
		rows := make([]row, 0, len(es))
		var total float64
		next := map[uint64]uint64{}
		for _, e := range es {
			bytes := e.RequestBytes + e.ResponseBytes
			next[e.ID] = bytes
			r := 0.0
			if was, ok := prev[e.ID]; ok && secs > 0 && bytes >= was {
				r = float64(bytes-was) / secs
			}
			total += r
			rows = append(rows, row{e, r})
		}
		prev = next
		sort.SliceStable(rows, func(a, b int) bool {
			if rows[a].rate != rows[b].rate {
				return rows[a].rate > rows[b].rate
			}
			return rows[a].e.RequestBytes+rows[a].e.ResponseBytes > rows[b].e.RequestBytes+rows[b].e.ResponseBytes
		})
		if rounds != 1 {
			fmt.Fprint(c.out, "\033[H\033[2J")
		}
		fmt.Fprintf(c.out, "kmesh top — %s — %d open connection ends, %s/s\n\n", now.Format(time.TimeOnly), len(es), size(uint64(total)))
		w := tabwriter.NewWriter(c.out, 0, 2, 2, ' ', 0)
		fmt.Fprintln(w, "RATE\tREPORTER\tSOURCE\tDESTINATION\tSERVICE\tTOTAL\tAGE\tRTT\tACCEL")
		for i, r := range rows {
			if i == topRows {
				// Said, not silently cut: connections -o json has them all.
				fmt.Fprintf(w, "(%d more)\n", len(rows)-topRows)
				break
			}
			e := r.e
			fmt.Fprintf(w, "%s/s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%v\n", size(uint64(r.rate)), e.Reporter,
				who(e.Source), who(e.Destination), service(&e), size(e.RequestBytes+e.ResponseBytes),
				time.Duration(e.DurationMs*float64(time.Millisecond)).Round(time.Second), rtt(e.RTTMicros), e.Accelerated)
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// topRows bounds top's table to a screen.
const topRows = 40

// logs prints the access log: the recent lines, and with follow every new
// one until interrupted.
func (c client) logs(follow bool) error {
	path := "/debug/accesslog"
	if follow {
		path += "?follow=1"
	}
	// A follow lasts until ^C; the recent lines are one answer, bounded
	// like every other command's.
	var timeout time.Duration
	if !follow {
		timeout = requestTimeout
	}
	resp, err := c.httpClient(timeout).Get(c.base + path)
	if err != nil {
		return fmt.Errorf("is %s running? %w", c.serverName(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	out := bufio.NewWriter(c.out)
	for sc.Scan() {
		line := sc.Bytes()
		if c.json {
			// Passed on as the admin API wrote it, once it is known to be
			// the JSON a script reading -o json expects.
			if !json.Valid(line) {
				return fmt.Errorf("access log line %q is not JSON", line)
			}
			out.Write(line)
			out.WriteByte('\n')
		} else {
			var e admin.Connection
			if err := json.Unmarshal(line, &e); err != nil {
				return fmt.Errorf("access log line %q: %w", line, err)
			}
			accel := ""
			if e.Accelerated {
				accel = " accelerated"
			}
			fmt.Fprintf(out, "%s %s %s -> %s (%s) via %s: %s up, %s down, %s, rtt %s, %s%s\n",
				e.Time.Local().Format("15:04:05.000"), e.Reporter, who(e.Source), who(e.Destination),
				e.Destination.Address, service(&e), size(e.RequestBytes), size(e.ResponseBytes),
				time.Duration(e.DurationMs*float64(time.Millisecond)).Round(time.Microsecond), rtt(e.RTTMicros), e.Result, accel)
		}
		// Each line as it comes: a follower wants to see it now.
		if err := out.Flush(); err != nil {
			return err
		}
	}
	return sc.Err()
}

func size(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

func rtt(us uint32) string {
	if us == 0 {
		return "-"
	}
	return (time.Duration(us) * time.Microsecond).String()
}
