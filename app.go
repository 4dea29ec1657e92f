package postscale

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// App is the postscale app: the registry of the key stores (and their
// caches) that the running config's postscale handlers use, which is what
// the admin API manages. Handlers load it themselves, so it needs no
// configuration of its own.
type App struct {
	logger *zap.Logger
	// admin is the admin endpoint address of the app's config, if known.
	admin string

	mu       sync.Mutex
	keyrings map[string]*keyring // by store identity
	// planNames are the names of the plans the handlers define, by the
	// identity of the store they use, and planQuotas the quotas of those
	// that have one (the first handler's, if two differ).
	planNames  map[string]map[string]bool
	planQuotas map[string]map[string]Quota
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "postscale",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision implements caddy.Provisioner.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.admin = configAdmin(ctx)
	return nil
}

// Start implements caddy.App: now that the config serves, each store that
// lives on this host (a SQLite file) learns that this process serves it,
// and warns of other processes that do too. (Not at provisioning, which
// caddy validate also does.)
func (a *App) Start() error {
	a.mu.Lock()
	stores := make([]Store, 0, len(a.keyrings))
	for _, k := range a.keyrings {
		stores = append(stores, k.store)
	}
	a.mu.Unlock()
	for _, s := range stores {
		if hl, ok := s.(hostLocal); ok {
			hl.announce(a.admin, a.logger)
		}
	}
	return nil
}

// hostLocal is a store that lives on this host, which the gateway
// processes serving it register with (see presence.go). A shared store
// (PostgreSQL) is not: several replicas on it are the design.
type hostLocal interface {
	announce(admin string, logger *zap.Logger)
}

// Stop implements caddy.App.
func (a *App) Stop() error { return nil }

// register records a handler's keyring and the plans it defines (beside
// DefaultPlans), so that the admin API manages its store and refuses to
// put an account on a plan that none of the store's handlers defines.
func (a *App) register(k *keyring, plans map[string]Plan) {
	a.mu.Lock()
	defer a.mu.Unlock()
	id := k.store.Identity()
	if a.keyrings == nil {
		a.keyrings = make(map[string]*keyring)
		a.planNames = make(map[string]map[string]bool)
		a.planQuotas = make(map[string]map[string]Quota)
	}
	a.keyrings[id] = k
	if a.planNames[id] == nil {
		a.planNames[id] = make(map[string]bool)
		a.planQuotas[id] = make(map[string]Quota)
	}
	for name, p := range plans {
		a.planNames[id][name] = true
		if _, seen := a.planQuotas[id][name]; !seen && p.Quota != nil {
			a.planQuotas[id][name] = *p.Quota
		}
	}
}

// manager returns the management operations on k's store, knowing the
// plans (and their quotas) that the store's handlers define, and dropping
// what they change from k's cache.
func (a *App) manager(k *keyring) storeManager {
	id := k.store.Identity()
	return storeManager{store: k.store, now: time.Now, changed: k.apply, plans: a.plans(id), planQuotas: a.quotas(id)}
}

// quotas returns the quotas of the plans that the handlers of the store
// with that identity define.
func (a *App) quotas(identity string) map[string]Quota {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.planQuotas[identity])
}

// plans returns, sorted, the plans an account of the store with that
// identity may be on: the defaults, those its handlers define, and
// enterprise.
func (a *App) plans(identity string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return planNames(a.planNames[identity])
}

// planNames returns, sorted, DefaultPlans, enterprise (whose accounts
// carry their own rate) and the names in defined.
func planNames(defined map[string]bool) []string {
	names := []string{"enterprise"}
	for name := range DefaultPlans {
		names = append(names, name)
	}
	for name := range defined {
		names = append(names, name)
	}
	sort.Strings(names)
	return slices.Compact(names)
}

// errNoStore means the running config has no postscale handler.
var errNoStore = errors.New("no postscale handler in the running config")

// keyring returns the keyring of the store with the given identity, or the
// only one when identity is empty.
func (a *App) keyring(identity string) (*keyring, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if identity != "" {
		if k, ok := a.keyrings[identity]; ok {
			return k, nil
		}
		return nil, fmt.Errorf("no store %q in the running config", identity)
	}
	switch len(a.keyrings) {
	case 0:
		return nil, errNoStore
	case 1:
		for _, k := range a.keyrings {
			return k, nil
		}
	}
	ids := make([]string, 0, len(a.keyrings))
	for id := range a.keyrings {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return nil, fmt.Errorf("the running config uses several stores; name one with ?store= (one of %s)", strings.Join(ids, ", "))
}

// Interface guards.
var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
	_ hostLocal         = (*SQLiteStore)(nil)
)
