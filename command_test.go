package postscale

import (
	"strings"
	"testing"
)

// TestConfigPlans: the CLI straight on a store reads the plans from the
// gateway's config: every postscale handler's, wherever it sits, with the
// defaults and enterprise; a config without a postscale handler tells
// nothing.
func TestConfigPlans(t *testing.T) {
	cfg := `{"apps":{"http":{"servers":{
		"a":{"routes":[{"handle":[{"handler":"postscale","plans":{"pro":{"rate":5}}},{"handler":"reverse_proxy"}]}]},
		"b":{"routes":[{"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"postscale","plans":{"max":{"rate":9,"burst":9}}}]}]}]}],
		     "errors":{"routes":[{"handle":[{"handler":"postscale"}]}]}}}}}}`
	plans, err := configPlans([]byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(plans, ","), "enterprise,growth,max,pro,scale,starter"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	plans, err = configPlans([]byte(`{"apps":{"http":{"servers":{"a":{"routes":[{"handle":[{"handler":"file_server"}]}]}}}}}`))
	if err != nil || plans != nil {
		t.Errorf("a config without postscale: got %v, %v; want nil", plans, err)
	}
	if _, err := configPlans([]byte(`{`)); err == nil {
		t.Error("broken JSON accepted")
	}
}

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
