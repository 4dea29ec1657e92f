package postscale

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Several gateway processes on one host can serve the same SQLite store
// without noticing: Caddy's listeners set SO_REUSEPORT, so a second
// `caddy run` on the same ports starts, the kernel spreads connections
// across both, and each keeps its own rate-limit buckets. An account then
// gets up to N times its plan. So a gateway process registers itself
// beside the store it serves, and says loudly when it finds others.
//
// The registry is a directory beside the store file, <store>.gateways,
// with one entry per process: a file that its process holds an exclusive
// flock on for as long as it serves the store, holding its pid, admin
// address and start time. The kernel drops the lock when the process ends
// however it ends, so an entry nobody holds is left from a crash and is
// removed by whoever finds it. One entry per process, rather than one lock
// file that the first process holds, is what lets a third process still
// find the second after the first has gone.
//
// Only a serving process registers (the postscale app's Start): the CLI,
// which opens the store beside a running server by design, and `caddy
// validate`, which provisions a config without serving it, do not. A
// reload in the same process keeps the store's shared pool, and with it
// the registration, so it finds nothing new to warn about.

// gatewayProcess is one gateway process serving a store.
type gatewayProcess struct {
	PID     int       `json:"pid"`
	Admin   string    `json:"admin,omitempty"` // its admin endpoint's address, if known
	Started time.Time `json:"started"`
}

// presence is this process's entry in the registry of a store.
type presence struct {
	mu   sync.Mutex
	dir  string
	name string
	f    *os.File // holds the lock
	self gatewayProcess
}

// presenceDir is the registry directory of the store file at path.
func presenceDir(storePath string) string { return storePath + ".gateways" }

// registerPresence enters this process in the registry of the store file
// at storePath, and returns the other gateway processes that serve it.
// It fails where file locks are not available.
func registerPresence(storePath, admin string) (*presence, []gatewayProcess, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, nil, err
	}
	p := &presence{
		dir:  presenceDir(storePath),
		name: strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:]),
		self: gatewayProcess{PID: os.Getpid(), Admin: admin, Started: time.Now().UTC()},
	}
	if err := p.write(); err != nil {
		return nil, nil, err
	}
	others, err := gatewaysOf(storePath, true)
	if err != nil {
		p.release()
		return nil, nil, err
	}
	return p, others, nil
}

// write puts this process's entry in place: written whole under a hidden
// name and locked first, then renamed to its own name, so that every entry
// others can see is complete and locked. A rewrite (a new admin address)
// replaces the old file the same way, then lets go of it.
func (p *presence) write() error {
	content, err := json.Marshal(p.self)
	if err != nil {
		return err
	}
	var f *os.File
	tmp := filepath.Join(p.dir, "."+p.name)
	for attempt := 0; ; attempt++ {
		if err := os.MkdirAll(p.dir, 0o700); err != nil {
			return err
		}
		f, err = os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		// Another process may remove the directory once it is empty,
		// between the two calls: then make it again.
		if err == nil || !errors.Is(err, os.ErrNotExist) || attempt == 2 {
			break
		}
	}
	if err != nil {
		return err
	}
	if err := lockFile(f, true); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if _, err := f.Write(content); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, filepath.Join(p.dir, p.name)); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if p.f != nil {
		p.f.Close()
	}
	p.f = f
	return nil
}

// setAdmin records a new admin address (after a reload that moved the
// admin endpoint).
func (p *presence) setAdmin(admin string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil || admin == p.self.Admin {
		return nil
	}
	p.self.Admin = admin
	return p.write()
}

// release takes this process out of the registry.
func (p *presence) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil {
		return
	}
	os.Remove(filepath.Join(p.dir, p.name))
	p.f.Close()
	p.f = nil
	os.Remove(p.dir) // once no process is left; fails while one is
}

// staleHidden is how old an unlocked hidden entry (one a process was
// writing when it crashed) must be before it is removed.
const staleHidden = time.Minute

// gatewaysOf returns the gateway processes other than this one that serve
// the store file at storePath, as its registry says; with prune, it
// removes the entries of processes that have ended. A store without a
// registry has none.
func gatewaysOf(storePath string, prune bool) ([]gatewayProcess, error) {
	dir := presenceDir(storePath)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var others []gatewayProcess
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		hidden := strings.HasPrefix(name, ".")
		pidText, _, _ := strings.Cut(strings.TrimPrefix(name, "."), "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || !e.Type().IsRegular() {
			continue // not an entry
		}
		f, err := os.Open(path)
		if err != nil {
			continue // gone meanwhile
		}
		switch err := lockFile(f, false); {
		case errors.Is(err, errLocked):
			// A live process holds it.
			if hidden || pid == os.Getpid() {
				break // still being written, or this process's own
			}
			g := gatewayProcess{PID: pid}
			if b, err := io.ReadAll(io.LimitReader(f, 4096)); err == nil {
				_ = json.Unmarshal(b, &g)
				g.PID = pid
			}
			others = append(others, g)
		case err == nil:
			// Nobody holds it: its process has ended.
			if fi, statErr := f.Stat(); prune && statErr == nil && (!hidden || time.Since(fi.ModTime()) > staleHidden) {
				if cur, err := os.Stat(path); err == nil && os.SameFile(cur, fi) {
					os.Remove(path)
				}
			}
		default:
			f.Close()
			return nil, err
		}
		f.Close()
	}
	return others, nil
}

// describeGateways names gateway processes for a message: pid, admin
// address and start time.
func describeGateways(gs []gatewayProcess) string {
	parts := make([]string, len(gs))
	for i, g := range gs {
		s := "pid " + strconv.Itoa(g.PID)
		if g.Admin != "" {
			s += ", admin endpoint " + g.Admin
		}
		if !g.Started.IsZero() {
			s += ", started " + g.Started.Local().Format(time.RFC3339)
		}
		parts[i] = s
	}
	return strings.Join(parts, "; ")
}

// configAdmin returns the admin endpoint address of the config that ctx
// belongs to, or "" if it cannot be told. Caddy keeps a context's config
// unexported; it is read here by reflection, only read, and a Caddy whose
// layout differs just leaves the address out of the warning (a test
// catches it).
func configAdmin(ctx caddy.Context) (admin string) {
	defer func() {
		if recover() != nil {
			admin = ""
		}
	}()
	cfg := reflect.ValueOf(ctx).FieldByName("cfg")
	if !cfg.IsValid() || cfg.Kind() != reflect.Pointer || cfg.IsNil() {
		return ""
	}
	adm := cfg.Elem().FieldByName("Admin")
	if !adm.IsValid() || adm.Kind() != reflect.Pointer {
		return ""
	}
	if adm.IsNil() {
		return caddy.DefaultAdminListen
	}
	if off := adm.Elem().FieldByName("Disabled"); off.IsValid() && off.Kind() == reflect.Bool && off.Bool() {
		return "disabled"
	}
	listen := adm.Elem().FieldByName("Listen")
	if !listen.IsValid() || listen.Kind() != reflect.String {
		return ""
	}
	if listen.String() == "" {
		return caddy.DefaultAdminListen
	}
	return listen.String()
}

// errLocked is lockFile's answer for a file another process holds.
var errLocked = errors.New("locked by another process")

// errNoLocks is lockFile's answer where file locks are not available.
var errNoLocks = fmt.Errorf("file locks are not available on this system")
