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
