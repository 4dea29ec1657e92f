package postscale

import (
	"fmt"
	"net/http"
	"slices"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// ScopeRule says which scope a request needs: a key that carries scopes
// must carry Scope for every request the matchers match. A key without
// scopes is a full-access key and passes every rule.
type ScopeRule struct {
	// Scope is the scope required, e.g. "emails:send".
	Scope string `json:"scope"`
	// MatchRaw selects the requests that need the scope, as Caddy request
	// matcher sets (any set may match). Default: every request.
	MatchRaw caddyhttp.RawMatcherSets `json:"match,omitempty" caddy:"namespace=http.matchers"`

	match     caddyhttp.MatcherSets
	rejection rejection // the 403, built once
}

// provision loads the matchers and builds the 403 response.
func (sr *ScopeRule) provision(ctx caddy.Context) error {
	if !validScope(sr.Scope) {
		return fmt.Errorf("require_scopes: scope %q: a scope is printable ASCII without spaces, quotes or backslashes, e.g. emails:send", sr.Scope)
	}
	var err error
	if sr.match, err = loadMatchers(ctx, sr, "MatchRaw", sr.MatchRaw); err != nil {
		return fmt.Errorf("require_scopes: scope %s: %w", sr.Scope, err)
	}
	sr.rejection = newRejection(http.StatusForbidden,
		fmt.Sprintf(`Bearer realm="postscale", error="insufficient_scope", scope=%q`, sr.Scope), "",
		"permission_error", "insufficient_scope",
		fmt.Sprintf("This API key does not have the %q scope that this request needs. Use a key with that scope, or a key without scopes.", sr.Scope))
	return nil
}

// missingScope returns the first rule that matches r and whose scope the
// key lacks, or nil. Keys without scopes never lack one.
func missingScope(rules []ScopeRule, keyScopes []string, r *http.Request) (*ScopeRule, error) {
	if len(keyScopes) == 0 {
		return nil, nil
	}
	for i := range rules {
		sr := &rules[i]
		if slices.Contains(keyScopes, sr.Scope) {
			continue
		}
		match, err := sr.match.AnyMatchWithError(r)
		if err != nil {
			return nil, err
		}
		if match {
			return sr, nil
		}
	}
	return nil, nil
}

// validScope accepts printable ASCII without spaces, quotes or
// backslashes: what fits in a quoted WWW-Authenticate parameter as is.
func validScope(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}
