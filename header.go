package postscale

import (
	"net/http"
	"net/url"
	"strings"
)

// bearerToken returns the token of the request's one Authorization header
// (RFC 6750 §2.1; the scheme name is case-insensitive), or the outcome that
// rejects the request: outcomeMissing for no header or another scheme,
// outcomeInvalid for an empty token, outcomeMultipleAuth for several
// headers.
func bearerToken(h http.Header) (string, outcome) {
	vals := h["Authorization"]
	switch len(vals) {
	case 0:
		return "", outcomeMissing
	case 1:
	default:
		return "", outcomeMultipleAuth
	}
	v := strings.Trim(vals[0], " \t")
	scheme, token, _ := strings.Cut(v, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", outcomeMissing
	}
	token = strings.Trim(token, " \t")
	if token == "" {
		return "", outcomeInvalid
	}
	return token, outcomeAdmitted
}

// credentialParams are query parameters that carry an API key: sending a
// key in the URL is refused, since URLs are logged and cached everywhere.
var credentialParams = [...]string{"api_key", "access_token", "key"}

// credentialsInQuery reports whether a raw query string carries one of the
// credentialParams, without allocating for the common query.
func credentialsInQuery(rawQuery string) bool {
	for rawQuery != "" {
		var pair string
		pair, rawQuery, _ = strings.Cut(rawQuery, "&")
		name, _, _ := strings.Cut(pair, "=")
		if strings.Contains(name, "%") || strings.Contains(name, "+") {
			if n, err := url.QueryUnescape(name); err == nil {
				name = n
			}
		}
		for _, p := range credentialParams {
			if strings.EqualFold(name, p) {
				return true
			}
		}
	}
	return false
}

// dropClientHeaders removes every Postscale-* header the client sent, so a
// client can never choose its own mode, account, key or plan. The
// Postscale_* and Postscale.* spellings go too, because CGI-style backends
// read them as the same variable as Postscale-*. (Caddy already drops
// header names with '_' or '.' unless told to keep them.)
func dropClientHeaders(h http.Header) {
	for name := range h {
		if len(name) > len("Postscale-") && strings.EqualFold(name[:len("Postscale")], "Postscale") {
			if c := name[len("Postscale")]; c == '-' || c == '_' || c == '.' {
				delete(h, name)
			}
		}
	}
}
