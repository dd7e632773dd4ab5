// Package deploy holds deployment files: the Prometheus configuration, the
// alert and recording rules, and the Grafana dashboard for
// docker-compose.yml. Its tests keep the dashboard in step with the metrics
// documented in docs/operations.md, and every query of the dashboard and the
// rules in step with what the running processes export.
package deploy

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

func TestDashboardUsesDocumentedMetrics(t *testing.T) {
	data, err := os.ReadFile("grafana/dashboards/routerd.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	docs, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	metric := regexp.MustCompile(`\b(?:routerd|subscriber|cache)_[a-z_]+`)
	seen := 0
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, target := range p.Targets {
			for _, name := range metric.FindAllString(target.Expr, -1) {
				seen++
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					name = strings.TrimSuffix(name, suffix)
				}
				if !strings.Contains(string(docs), name) {
					t.Errorf("panel %q uses %s, which docs/operations.md does not document", p.Title, name)
				}
			}
		}
	}
	if dash.UID == "" || seen < 10 {
		t.Errorf("dashboard uid %q with %d metric references", dash.UID, seen)
	}
}
