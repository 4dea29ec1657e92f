package test

import (
	"fmt"
	"net/http"
	"testing"
)

// A request matcher that fails (issue: it became a 500 that ran the
// site's handle_errors routes, which may proxy the unverified request,
// Authorization included, to the backend). The gateway must answer such a
// request itself, with its JSON error, and send nothing on.

var internalError = rejection{http.StatusInternalServerError, "", "api_error", "internal_error", false}

// TestMatcherErrorNeverReachesBackend: a CEL expression that fails on the
// client's input (int() of a header that is not a number), used as
// postscale's matcher and as a require_scope rule's, in a site whose
// handle_errors proxies to the same backend. The failing requests get 500
// internal_error from the gateway and the backend receives nothing; the
// others work as usual, so the matchers do match.
func TestMatcherErrorNeverReachesBackend(t *testing.T) {
	backend := newRecorder(t, "mail")
	loadCaddyfile(t, fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	@needs_key expression `+"`"+`path('/v1/*') || int({http.request.header.X-Priority}) > 0`+"`"+`
	postscale @needs_key {
		store sqlite %s
		require_scope emails:send {
			expression `+"`"+`method('POST') && int({http.request.header.X-Batch}) >= 0`+"`"+`
		}
	}
	reverse_proxy %s
	handle_errors {
		reverse_proxy %s
	}
}
`, storePath(t), backend.addr(), backend.addr()))
	createAccount(t, "acme", "growth")
	full := createKey(t, "acme", "full access", "live")
	reader := postKey(t, map[string]any{"account": "acme", "name": "reader", "mode": "live", "scopes": []string{"emails:read"}})

	// The protect matcher: /v1/* short-circuits, other paths evaluate
	// int() of X-Priority.
	expectRejected(t, backend, missingKey, "/v1/emails")
	expectPassed(t, backend, "/status", "X-Priority: 0")
	expectRejected(t, backend, missingKey, "/status", "X-Priority: 1")
	expectRejected(t, backend, internalError, "/status", "X-Priority: high")
	expectRejected(t, backend, internalError, "/status", "X-Priority: high", bearer(full.Key))

	// The scope rule's matcher, for a key with scopes: int() of X-Batch.
	expectRejectedMethod(t, backend, rejection{http.StatusForbidden, `Bearer realm="postscale", error="insufficient_scope", scope="emails:send"`, "permission_error", "insufficient_scope", false},
		http.MethodPost, "/v1/emails", bearer(reader.Key), "X-Batch: 1")
	expectRejectedMethod(t, backend, internalError, http.MethodPost, "/v1/emails", bearer(reader.Key), "X-Batch: many")
	got, _ := expectPassedMethod(t, backend, http.MethodPost, "/v1/emails", bearer(full.Key), "X-Batch: many")
	assertKeyAbsent(t, got, full.Key)
}
