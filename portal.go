package postscale

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Portal serves the API keys page to a customer who has signed in to the
// site, and the JSON API the page calls (under api/), for that customer's
// account only. An earlier handler establishes who the customer is, e.g.
// forward_auth asking the site's own application and copying the account
// id into a request header; Account names it with a placeholder. The
// portal never calls the next handler.
//
// Its API: GET api/keys (the account's keys), POST api/keys (create one;
// the answer carries the key, that once), GET api/keys/{id}, POST
// api/keys/{id}/roll, POST api/keys/{id}/revoke, GET api/usage. Every API
// call must carry X-Postscale-CSRF: 1 and come from the page's own site
// (Sec-Fetch-Site, or else Origin, when the browser sends them).
type Portal struct {
	// Account is the signed-in account's id, normally a placeholder such
	// as {http.request.header.X-Account-Id}. When it is empty the answer
	// is 401 with an empty body.
	Account string `json:"account,omitempty"`

	// StoreRaw is the key store, as for the postscale handler; a portal
	// and a postscale handler on the same store share one cache, so a key
	// revoked here is refused by the gateway at once. Default: the
	// embedded SQLite store in Caddy's data directory.
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=postscale.stores inline_key=backend"`

	// APIURL is the gateway's URL, shown in the page's example curl
	// line. Default: this site's own origin.
	APIURL string `json:"api_url,omitempty"`

	store  Store
	keys   *keyring
	ctx    caddy.Context
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Portal) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.postscale_portal",
		New: func() caddy.Module { return new(Portal) },
	}
}

// Provision loads the store and joins (or creates) its keyring.
func (p *Portal) Provision(ctx caddy.Context) error {
	p.ctx = ctx
	p.logger = ctx.Logger()
	if p.StoreRaw == nil {
		p.StoreRaw = json.RawMessage(`{"backend":"sqlite"}`)
	}
	mod, err := ctx.LoadModule(p, "StoreRaw")
	if err != nil {
		return fmt.Errorf("loading store: %w", err)
	}
	p.store = mod.(Store)
	p.keys, err = loadKeyring(p.store, ctx.Logger().Named("keyring"))
	return err
}

// Validate checks the configuration.
func (p *Portal) Validate() error {
	if strings.TrimSpace(p.Account) == "" {
		return errors.New("postscale_portal: account is required: the placeholder that holds the signed-in account's id, e.g. {http.request.header.X-Account-Id}")
	}
	if p.APIURL != "" {
		u, err := url.Parse(p.APIURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("postscale_portal: api_url must be an http(s) URL such as https://api.example.com, got %q", p.APIURL)
		}
	}
	return nil
}

// Cleanup releases this config's hold on the keyring.
func (p *Portal) Cleanup() error {
	if p.keys == nil {
		return nil
	}
	_, err := keyrings.Delete(keyringKey(p.store))
	return err
}

// maxPortalBody bounds the body of a portal API call.
const maxPortalBody = 64 << 10

// csrfHeader is the header every portal API call carries. A cross-site
// form cannot send it, and a cross-site script cannot either without a
// CORS preflight, which the portal does not answer.
const csrfHeader = "X-Postscale-Csrf"

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (p *Portal) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	setPageHeaders(w.Header())
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	account := strings.TrimSpace(repl.ReplaceKnown(p.Account, ""))
	if account == "" || checkAccountRef("account", account) != nil {
		// Nobody signed in (or an id no account can have): nothing to show.
		w.WriteHeader(http.StatusUnauthorized)
		return nil
	}
	path := r.URL.Path
	if i := strings.LastIndex(path, "/api/"); i >= 0 {
		p.serveAPI(w, r, account, path[i+len("/api/"):])
		return nil
	}
	if path == "" || path == "/" {
		// The page links its files relatively, so its URL must end in a
		// slash: /settings/api-keys becomes /settings/api-keys/.
		if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && !strings.HasSuffix(orig.URL.Path, "/") {
			http.Redirect(w, r, orig.URL.Path+"/", http.StatusFound)
			return nil
		}
	}
	name := uiFileName(path)
	if strings.HasSuffix(path, "/") {
		name = ""
	}
	apiURL := p.APIURL
	if apiURL == "" {
		scheme := "https"
		if r.TLS == nil {
			scheme = "http"
		}
		apiURL = scheme + "://" + r.Host
	}
	serveUIFile(w, r, name, pageSettings{mode: "customer", apiURL: apiURL})
	return nil
}

// crossSite says why a portal API call is refused as possibly cross-site,
// or "" when it is not.
func crossSite(r *http.Request) string {
	if r.Header.Get(csrfHeader) != "1" {
		return "this call needs the header X-Postscale-CSRF: 1, which the API keys page sends"
	}
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return "this call comes from another site"
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host == "" || !strings.EqualFold(u.Host, r.Host) {
			return "this call comes from another site"
		}
	}
	return ""
}

// portalError writes a JSON error {"error": msg}.
func portalError(w http.ResponseWriter, status int, msg string) {
	_ = writeJSON(w, status, map[string]string{"error": msg})
}

// portalKeys is the answer of GET api/keys.
type portalKeys struct {
	Account string      `json:"account"`
	Keys    []KeyRecord `json:"keys"`
}

// serveAPI serves the portal's JSON API for the signed-in account. route
// is the path after api/.
func (p *Portal) serveAPI(w http.ResponseWriter, r *http.Request, account, route string) {
	if why := crossSite(r); why != "" {
		portalError(w, http.StatusForbidden, why)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxPortalBody)
	ctx := r.Context()
	m := storeManager{store: p.store, now: time.Now, changed: p.keys.apply}
	if app, err := p.ctx.AppIfConfigured("postscale"); err == nil {
		m = app.(*App).manager(p.keys)
	}
	// keys[/<id>[/<action>]], usage
	collection, id, _ := strings.Cut(route, "/")
	id, action, _ := strings.Cut(id, "/")
	var (
		status = http.StatusOK
		out    any
		err    error
	)
	allow := func(methods ...string) bool {
		for _, m := range methods {
			if r.Method == m {
				return true
			}
		}
		w.Header().Set("Allow", strings.Join(methods, ", "))
		portalError(w, http.StatusMethodNotAllowed, fmt.Sprintf("this call takes %s", strings.Join(methods, " or ")))
		return false
	}
	switch {
	case collection == "usage" && id == "":
		if !allow(http.MethodGet) {
			return
		}
		p.keys.flushQuotas(ctx, time.Now())
		p.keys.flushHours(ctx, time.Now())
		out, err = m.AccountUsage(ctx, account)
	case collection == "keys" && id == "":
		switch r.Method {
		case http.MethodGet:
			p.keys.flushUsage(ctx)
			var keys []KeyRecord
			keys, err = m.ListKeys(ctx, account)
			out = portalKeys{Account: account, Keys: keys}
		case http.MethodPost:
			var req KeyRequest
			if err = decodeBody(r, &req); err == nil {
				if req.Account != "" && req.Account != account {
					err = badInput("account", "is the account you are signed in to; leave it out")
				} else {
					req.Account = account
					out, err = m.CreateKey(ctx, req)
					status = http.StatusCreated
				}
			}
		default:
			allow(http.MethodGet, http.MethodPost)
			return
		}
	case collection == "keys" && action == "":
		if !allow(http.MethodGet) {
			return
		}
		p.keys.flushUsage(ctx)
		out, err = ownKey(ctx, m, account, id)
	case collection == "keys" && action == "roll":
		if !allow(http.MethodPost) {
			return
		}
		var req RollRequest // the body may be left out
		if err = decodeBody(r, &req); errors.Is(err, errEmptyBody) {
			err = nil
		}
		if err == nil {
			if _, err = ownKey(ctx, m, account, id); err == nil {
				out, err = m.RollKey(ctx, id, req)
				status = http.StatusCreated
			}
		}
	case collection == "keys" && action == "revoke":
		if !allow(http.MethodPost) {
			return
		}
		if _, err = ownKey(ctx, m, account, id); err == nil {
			out, err = m.RevokeKey(ctx, id)
		}
	default:
		portalError(w, http.StatusNotFound, "no such call")
		return
	}
	if err != nil {
		status := errorStatus(err)
		msg := scrubKeys(err.Error())
		if status == http.StatusInternalServerError {
			// The store's own words are for the operator's log, not for
			// the customer.
			p.logger.Error("the key store could not answer a portal call", zap.String("error", msg))
			status, msg = http.StatusServiceUnavailable, "the key store could not answer; try again shortly"
		}
		portalError(w, status, msg)
		return
	}
	_ = writeJSON(w, status, out)
}

// ownKey returns the key with that id if it belongs to account. Another
// account's key is not found, in the same words as a key that does not
// exist, so ids of other accounts' keys cannot be confirmed either.
func ownKey(ctx context.Context, m storeManager, account, id string) (KeyRecord, error) {
	rec, err := m.GetKey(ctx, id)
	if err != nil {
		return KeyRecord{}, err
	}
	if rec.Account != account {
		return KeyRecord{}, notFoundAs(ErrNotFound, "key", id)
	}
	return rec, nil
}

// parsePortalCaddyfile sets up the postscale_portal directive.
func parsePortalCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	p := new(Portal)
	err := p.UnmarshalCaddyfile(h.Dispenser)
	return p, err
}

// UnmarshalCaddyfile sets up the portal from Caddyfile tokens. Syntax:
//
//	postscale_portal [<matcher>] {
//	    account <placeholder>
//	    store sqlite [<path>] | store postgres <dsn>
//	    api_url <url>
//	}
func (p *Portal) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		name := d.Val()
		if seen[name] {
			return d.Errf("%s: subdirective given more than once", name)
		}
		seen[name] = true
		switch name {
		case "account", "api_url":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if name == "account" {
				p.Account = d.Val()
			} else {
				p.APIURL = d.Val()
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "store":
			raw, err := unmarshalGuest(d, "postscale.stores.")
			if err != nil {
				return err
			}
			p.StoreRaw = raw
		default:
			return d.Errf("unrecognized postscale_portal subdirective %q", name)
		}
	}
	if p.Account == "" {
		return d.Err("postscale_portal: account is required, e.g. account {http.request.header.X-Account-Id}")
	}
	return nil
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Portal)(nil)
	_ caddy.Validator             = (*Portal)(nil)
	_ caddy.CleanerUpper          = (*Portal)(nil)
	_ caddyhttp.MiddlewareHandler = (*Portal)(nil)
	_ caddyfile.Unmarshaler       = (*Portal)(nil)
)
