package postscale

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// adminAPI serves account and key management under /postscale/ on Caddy's
// admin endpoint, so it inherits the endpoint's access controls (localhost
// only by default). It works on the store of the running config's
// postscale handler; with several stores, ?store=<identity> picks one.
type adminAPI struct {
	ctx caddy.Context
}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.postscale",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Provision keeps the context; the postscale app is looked up per request
// because the admin endpoint is provisioned before the apps are.
func (a *adminAPI) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	return nil
}

const adminPrefix = "/postscale/"

// Routes implements caddy.AdminRouter.
func (a *adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: adminPrefix, Handler: caddy.AdminHandlerFunc(a.serve)},
		{Pattern: adminUIPrefix, Handler: caddy.AdminHandlerFunc(a.serveUI)},
	}
}

// adminUIPrefix is where the operators' API keys page is served: on the
// admin endpoint, behind its access controls, calling the JSON API above.
const adminUIPrefix = adminPrefix + "ui/"

// serveUI serves the page's files; it needs no store, so it works before
// a postscale handler is configured.
func (a *adminAPI) serveUI(w http.ResponseWriter, r *http.Request) error {
	name := strings.TrimPrefix(r.URL.Path, adminUIPrefix)
	serveUIFile(w, r, name, pageSettings{mode: "operator"})
	return nil
}

// Bounds of a management request body, in bytes.
const (
	// maxAdminBody bounds the body of every call but an import.
	maxAdminBody = 1 << 20
	// maxImportRow is the room of one key in an import: a row of the
	// largest realistic kind (a 64-character account, a 200-character
	// name of non-ASCII letters written as \u escapes, a 136-character
	// legacy key, a few scopes, indented) is about 1.7 KiB.
	maxImportRow = 2 << 10
	// maxImportBody bounds an import: maxImport keys of maxImportRow
	// each, and room for the rest (about 20.5 MiB).
	maxImportBody = maxImport*maxImportRow + maxAdminBody
)

// serve answers a management call. It writes its errors itself, in
// Caddy's admin error form {"error": "…"}, rather than handing them to
// Caddy, whose writer escapes <, > and & (a path would show as
// \u003c…\u003e); like Caddy, it logs each one.
func (a *adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	err := a.handle(w, r)
	if err == nil {
		return nil
	}
	apiErr, ok := err.(caddy.APIError)
	if !ok {
		apiErr = caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	if apiErr.Message == "" && apiErr.Err != nil {
		apiErr.Message = apiErr.Err.Error()
	}
	caddy.Log().Named("admin.api").Error("request error", zap.Error(err), zap.Int("status_code", apiErr.HTTPStatus))
	return writeJSON(w, apiErr.HTTPStatus, apiErr)
}

// writeJSON writes v as the JSON answer of a management call, with the
// given status: as written (no HTML escapes), and ending with a newline.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

func (a *adminAPI) handle(w http.ResponseWriter, r *http.Request) error {
	// A key pasted where an id belongs is refused before anything else,
	// and never repeated (Caddy has already logged the request's URI).
	if err := keyInURL(r); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
	}
	k, m, err := a.keyring(r)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: err}
	}
	ctx := r.Context()
	if strings.HasPrefix(r.URL.Path, adminPrefix+"keys") {
		// Key records show usage up to this request, not up to the last
		// flush.
		k.flushUsage(ctx)
	}
	// /postscale/<collection>[/<id>[/<action>]]
	collection, id, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, adminPrefix), "/")
	id, action, _ := strings.Cut(id, "/")
	limit := int64(maxAdminBody)
	if collection == "keys" && id == "import" {
		limit = maxImportBody
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	var (
		status = http.StatusOK
		out    any
	)
	method := func(allowed ...string) error {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("%s takes %s, not %s", r.URL.Path, strings.Join(allowed, " or "), r.Method)}
	}
	switch {
	case collection == "accounts" && id == "":
		switch r.Method {
		case http.MethodPost:
			out, err = withBody(r, m.CreateAccount)
			status = http.StatusCreated
		case http.MethodGet:
			q := r.URL.Query()
			limit := 0
			if v := q.Get("limit"); v != "" {
				if limit, err = strconv.Atoi(v); err != nil || limit == 0 {
					limit = -1 // refused by ListAccounts, naming the bounds
				}
			}
			out, err = m.ListAccounts(ctx, q.Get("after"), q.Get("q"), limit)
		default:
			return method(http.MethodGet, http.MethodPost)
		}
	case collection == "accounts" && action == "usage":
		if r.Method != http.MethodGet {
			return method(http.MethodGet)
		}
		// Counts up to this request, not up to the last flush.
		k.flushQuotas(ctx, time.Now())
		k.flushHours(ctx, time.Now())
		out, err = m.AccountUsage(ctx, id)
	case collection == "accounts" && action == "":
		switch r.Method {
		case http.MethodGet:
			out, err = m.GetAccount(ctx, id)
		case http.MethodPatch:
			out, err = withBody(r, func(ctx context.Context, req AccountUpdate) (Account, error) {
				return m.UpdateAccount(ctx, id, req)
			})
		default:
			return method(http.MethodGet, http.MethodPatch)
		}
	case collection == "keys" && id == "":
		switch r.Method {
		case http.MethodPost:
			out, err = withBody(r, m.CreateKey)
			status = http.StatusCreated
		case http.MethodGet:
			out, err = m.ListKeys(ctx, r.URL.Query().Get("account"))
		default:
			return method(http.MethodGet, http.MethodPost)
		}
	case collection == "keys" && id == "import" && action == "":
		if r.Method != http.MethodPost {
			return method(http.MethodPost)
		}
		out, err = withBody(r, m.ImportKeys)
		status = http.StatusCreated
	case collection == "keys" && id == "revoke" && action == "":
		if r.Method != http.MethodPost {
			return method(http.MethodPost)
		}
		out, err = withBody(r, func(ctx context.Context, req RevokeRequest) (KeyRecord, error) {
			return m.RevokeByKey(ctx, req.Key)
		})
	case collection == "keys" && action == "":
		switch r.Method {
		case http.MethodGet:
			out, err = m.GetKey(ctx, id)
		case http.MethodDelete:
			out, err = m.RevokeKey(ctx, id)
		default:
			return method(http.MethodGet, http.MethodDelete)
		}
	case collection == "keys" && action == "roll":
		if r.Method != http.MethodPost {
			return method(http.MethodPost)
		}
		var req RollRequest // the body may be left out
		if err = decodeBody(r, &req); errors.Is(err, errEmptyBody) {
			err = nil
		}
		if err == nil {
			out, err = m.RollKey(ctx, id, req)
			status = http.StatusCreated
		}
	default:
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no such endpoint: %s", r.URL.Path)}
	}
	if err != nil {
		// Every message was written not to repeat a key; scrubKeys makes
		// sure of it.
		return caddy.APIError{HTTPStatus: errorStatus(err), Err: errors.New(scrubKeys(err.Error()))}
	}
	return writeJSON(w, status, out)
}

// keyring returns the keyring of the running config's store, and the
// plans its handlers define.
func (a *adminAPI) keyring(r *http.Request) (*keyring, storeManager, error) {
	app, err := a.ctx.AppIfConfigured("postscale")
	if err != nil {
		return nil, storeManager{}, errNoStore
	}
	k, err := app.(*App).keyring(r.URL.Query().Get("store"))
	if err != nil {
		return nil, storeManager{}, err
	}
	return k, app.(*App).manager(k), nil
}

// keyInURL refuses a request whose path or query holds an API key (see
// nextKey), naming its redacted form only.
func keyInURL(r *http.Request) error {
	segments := strings.Split(strings.TrimPrefix(r.URL.Path, adminPrefix), "/")
	for i, seg := range segments {
		if start, end := nextKey(seg, 0); start >= 0 {
			what := "an id"
			switch {
			case i == 1 && segments[0] == "keys":
				what = "a key id (key_…)"
			case i == 1 && segments[0] == "accounts":
				what = "an account id"
			}
			return keyWhereIDBelongs("path", what, Redact(seg[start:end]))
		}
	}
	for name, vals := range r.URL.Query() {
		for _, v := range append([]string{name}, vals...) {
			if start, end := nextKey(v, 0); start >= 0 {
				return keyWhereIDBelongs("query", "a query value", Redact(v[start:end]))
			}
		}
	}
	return nil
}

// withBody decodes the request body as fn's input and calls fn with it.
func withBody[In, Out any](r *http.Request, fn func(context.Context, In) (Out, error)) (any, error) {
	var in In
	if err := decodeBody(r, &in); err != nil {
		return nil, err
	}
	return fn(r.Context(), in)
}

// errEmptyBody is the error of decodeBody for a request without a body.
var errEmptyBody = badInput("body", "is empty: want one JSON object of the documented fields")

// decodeBody reads the request body, bounded by serve, as exactly one JSON
// object into v: nothing but white space may follow it. Its errors name
// where the body is wrong, never what it holds.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// One value, then the end: trailing data is refused, not ignored.
		if _, err = dec.Token(); err == io.EOF {
			return nil
		}
		if tooLarge(err) == nil {
			return badInput("body", "has more after the JSON object (from byte %d); send one JSON object alone", dec.InputOffset())
		}
	}
	// The decoder's message may quote the input, which could hold a key:
	// say where, not what.
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var in *InputError
	switch {
	case tooLarge(err) != nil:
		return tooLarge(err)
	case err == io.EOF:
		return errEmptyBody
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badInput("body", "ends inside the JSON object: it was cut short")
	case errors.As(err, &in):
		return in // from an UnmarshalJSON of ours
	case errors.As(err, &syntax):
		return badInput("body", "is not valid JSON (at byte %d)", syntax.Offset)
	case errors.As(err, &typ):
		return badInput(typ.Field, "has the wrong type: want %s", typ.Type)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return badInput("body", "has a field this call does not take; see the documented fields")
	}
	return badInput("body", "must be one JSON object of the documented fields")
}

// errTooLarge is a request body over its call's limit.
type errTooLarge struct{ limit int64 }

func (e errTooLarge) Error() string {
	if e.limit == maxImportBody {
		return fmt.Sprintf("body: is larger than %d bytes, the limit of one import (%d keys of about %d bytes each); split it into several imports",
			e.limit, maxImport, maxImportRow)
	}
	return fmt.Sprintf("body: is larger than %d bytes, the limit of this call", e.limit)
}

// tooLarge returns the errTooLarge of a body that went over its limit.
func tooLarge(err error) error {
	var mb *http.MaxBytesError
	if errors.As(err, &mb) {
		return errTooLarge{limit: mb.Limit}
	}
	return nil
}

// errorStatus maps a Manager error onto an HTTP status.
func errorStatus(err error) int {
	var in *InputError
	switch {
	case errors.As(err, &errTooLarge{}):
		return http.StatusRequestEntityTooLarge
	case errors.As(err, &in):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrExists), errors.Is(err, ErrConflict):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// Interface guards.
var (
	_ caddy.AdminRouter = (*adminAPI)(nil)
	_ caddy.Provisioner = (*adminAPI)(nil)
)
