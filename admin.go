package postscale

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
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
	return []caddy.AdminRoute{{Pattern: adminPrefix, Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// maxAdminBody bounds a management request body.
const maxAdminBody = 1 << 20

func (a *adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	k, err := a.keyring(r)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: err}
	}
	m := storeManager{store: k.store, now: time.Now, changed: k.apply}
	ctx := r.Context()
	if strings.HasPrefix(r.URL.Path, adminPrefix+"keys") {
		// Key records show usage up to this request, not up to the last
		// flush.
		k.flushUsage(ctx)
	}
	// /postscale/<collection>[/<id>[/<action>]]
	collection, id, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, adminPrefix), "/")
	id, action, _ := strings.Cut(id, "/")
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
		if r.Method != http.MethodPost {
			return method(http.MethodPost)
		}
		out, err = withBody(r, m.CreateAccount)
		status = http.StatusCreated
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
		var req RollRequest
		if r.ContentLength != 0 {
			err = decodeBody(r, &req)
		}
		if err == nil {
			out, err = m.RollKey(ctx, id, req)
			status = http.StatusCreated
		}
	default:
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no such endpoint: %s", r.URL.Path)}
	}
	if err != nil {
		return caddy.APIError{HTTPStatus: errorStatus(err), Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(out)
}

// keyring returns the keyring of the running config's store.
func (a *adminAPI) keyring(r *http.Request) (*keyring, error) {
	app, err := a.ctx.AppIfConfigured("postscale")
	if err != nil {
		return nil, errNoStore
	}
	return app.(*App).keyring(r.URL.Query().Get("store"))
}

// withBody decodes the request body as fn's input and calls fn with it.
func withBody[In, Out any](r *http.Request, fn func(context.Context, In) (Out, error)) (any, error) {
	var in In
	if err := decodeBody(r, &in); err != nil {
		return nil, err
	}
	return fn(r.Context(), in)
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxAdminBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		// The decoder's message may quote the input, which could hold a
		// key: say where, not what.
		var syntax *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syntax):
			return badInput("body", "is not valid JSON (at byte %d)", syntax.Offset)
		case errors.As(err, &typ):
			return badInput(typ.Field, "has the wrong type: want %s", typ.Type)
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			return badInput("body", "has a field this call does not take; see the documented fields")
		}
		return badInput("body", "must be one JSON object of the documented fields")
	}
	return nil
}

// errorStatus maps a Manager error onto an HTTP status.
func errorStatus(err error) int {
	var in *InputError
	switch {
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
