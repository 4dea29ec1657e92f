package postscale

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
)

// App is the postscale app: the registry of the key stores (and their
// caches) that the running config's postscale handlers use, which is what
// the admin API manages. Handlers load it themselves, so it needs no
// configuration of its own.
type App struct {
	mu       sync.Mutex
	keyrings map[string]*keyring // by store identity
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "postscale",
		New: func() caddy.Module { return new(App) },
	}
}

// Start implements caddy.App.
func (a *App) Start() error { return nil }

// Stop implements caddy.App.
func (a *App) Stop() error { return nil }

func (a *App) register(k *keyring) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.keyrings == nil {
		a.keyrings = make(map[string]*keyring)
	}
	a.keyrings[k.store.Identity()] = k
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
var _ caddy.App = (*App)(nil)
