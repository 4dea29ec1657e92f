package postscale

import "testing"

func TestIsPostgresDSN(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"postgres://gateway@db.internal:5432/keys", true},
		{"postgresql://db.internal/keys?sslmode=verify-full", true},
		{"host=127.0.0.1 user=postgres password=s3cret dbname=test", true},
		{" dbname = test", true},
		{"/var/lib/postscale/keys.db", false},
		{"keys.db", false},
		{"./data/keys=old.db", false},
		{"", false},
	} {
		if got := isPostgresDSN(tc.name); got != tc.want {
			t.Errorf("isPostgresDSN(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
