package compiler

import (
	"fmt"
	"slices"
	"strings"

	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/authz"
	"github.com/kmesh-go/kmesh/daemon/model"
)

// policyScopes indexes the policies that apply without a workload naming
// them: global ones and namespace-wide ones.
type policyScopes struct {
	global []string
	byNS   map[string][]string
	exists map[string]bool
}

func newPolicyScopes(v model.View) *policyScopes {
	s := &policyScopes{byNS: map[string][]string{}, exists: map[string]bool{}}
	v.EachPolicy(func(p *model.AuthzPolicy) {
		s.exists[p.Key] = true
		switch p.Scope {
		case model.ScopeGlobal:
			s.global = append(s.global, p.Key)
		case model.ScopeNamespaceWide:
			s.byNS[p.Namespace] = append(s.byNS[p.Namespace], p.Key)
		}
	})
	return s
}

// policyList is the sorted list of policies guarding a workload, joined:
// the key of its policy set ("" when none).
func (c *Compiler) policyList(w *model.Workload) string {
	keys := slices.Concat(c.scopes.global, c.scopes.byNS[w.Namespace])
	for _, k := range w.Policies {
		// A policy istiod has not sent (yet) does not apply.
		if c.scopes.exists[k] {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return ""
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	return strings.Join(keys, "\n")
}

// policySet returns the set guarding w, compiling it on first use.
func (c *Compiler) policySet(v model.View, w *model.Workload, r *wlRec) uint32 {
	key := c.policyList(w)
	if r.ps != key {
		if old := c.ps[r.ps]; old != nil {
			delete(old.users, w.UID)
		}
		r.ps = key
	}
	if key == "" {
		return 0
	}
	rec := c.ps[key]
	if rec == nil {
		rec = &psRec{policies: strings.Split(key, "\n"), users: map[string]bool{}}
		c.ps[key] = rec
		c.compileSet(v, rec)
	}
	rec.users[w.UID] = true
	return rec.id
}

// compileSet (re)builds a set's tables; a changed set gets a new id and the
// old one is deleted after the backends moved.
func (c *Compiler) compileSet(v model.View, rec *psRec) {
	var policies []*model.AuthzPolicy
	for _, k := range rec.policies {
		// A workload may name a policy istiod has not sent yet: it does
		// not apply until it arrives.
		if p := v.Policy(k); p != nil {
			policies = append(policies, p)
		}
	}
	tables, err := authz.Compile(policies, c.idents, c.policyID, c.authzLimit)
	if err != nil {
		// The update is refused (NACK) and the compiler rebuilt; until then
		// the set fails closed rather than enforce something else.
		rec.err = err
		c.txnErrs = append(c.txnErrs, fmt.Errorf("policies %s: %w", strings.Join(rec.policies, ", "), err))
		tables = denyAll(c.policyID(rec.policies[0]))
	} else {
		rec.err = nil
	}
	if rec.tables != nil && rec.tables.Equal(tables) {
		return
	}
	if rec.id == 0 {
		for id, t := range c.adoptedPS {
			if t.Equal(tables) {
				rec.id, rec.tables = id, tables
				delete(c.adoptedPS, id)
				return
			}
		}
	}
	if rec.id != 0 {
		c.deadPS = append(c.deadPS, rec.id)
		c.psIDs.drop(rec.id)
	}
	rec.id = c.psIDs.next()
	rec.tables = tables
	c.newPS = append(c.newPS, maps.PolicySet{ID: rec.id, Tables: tables})
}

func denyAll(policy uint32) *maps.AuthzTables {
	return &maps.AuthzTables{
		Src:      []maps.AuthzCIDR{{Prefix: authz.Root4}, {Prefix: authz.Root6}},
		Dst:      []maps.AuthzCIDR{{Prefix: authz.Root4}, {Prefix: authz.Root6}},
		Ident:    map[uint32]uint16{},
		Ports:    map[uint16]uint16{},
		Verdicts: map[[4]uint16]maps.AuthzVerdict{{}: {Deny: true, Policy: policy}},
	}
}

// finishPolicySets recompiles sets when policies or identities changed,
// moves their workloads to the new ids, and puts set writes and deletes
// into the transaction.
func (c *Compiler) finishPolicySets(v model.View, txn *maps.Txn, done map[string]*work, policiesChanged bool) {
	if policiesChanged || c.identsGrew {
		// Where each backend of the transaction is, by id.
		inTxn := make(map[uint32]int, len(txn.Backends))
		for i, b := range txn.Backends {
			inTxn[b.ID] = i
		}
		for key, rec := range c.ps {
			if len(rec.users) == 0 {
				continue
			}
			before := rec.id
			c.compileSet(v, rec)
			if rec.id == before {
				continue
			}
			for uid := range rec.users {
				r := c.wl[uid]
				if r == nil || !r.compiled || r.ps != key {
					continue
				}
				if i, ok := inTxn[r.id]; ok {
					txn.Backends[i].PolicySet = rec.id
					continue
				}
				w := v.Workload(uid)
				if w == nil {
					continue
				}
				inTxn[r.id] = len(txn.Backends)
				txn.Backends = append(txn.Backends, c.backend(v, w, r))
			}
		}
	}
	for key, rec := range c.ps {
		if len(rec.users) == 0 {
			if rec.id != 0 {
				c.deadPS = append(c.deadPS, rec.id)
				c.psIDs.drop(rec.id)
			}
			delete(c.ps, key)
		}
	}
	txn.PolicySets = append(txn.PolicySets, c.newPS...)
	txn.DeletePolicySets = append(txn.DeletePolicySets, c.deadPS...)
	c.newPS, c.deadPS, c.identsGrew = nil, nil, false
}

// PolicySetErrors lists sets that could not compile (they deny all).
func (c *Compiler) PolicySetErrors() []error {
	var out []error
	for _, rec := range c.ps {
		if rec.err != nil {
			out = append(out, fmt.Errorf("policies %s: %w", strings.ReplaceAll(strings.Join(rec.policies, ","), "\n", ","), rec.err))
		}
	}
	return out
}

// PolicySetOf returns the tables guarding a workload, for the daemon's
// sweep of established connections.
func (c *Compiler) PolicySetOf(uid string) *maps.AuthzTables {
	r := c.wl[uid]
	if r == nil || !r.compiled || r.ps == "" {
		return nil
	}
	if rec := c.ps[r.ps]; rec != nil {
		return rec.tables
	}
	return nil
}
