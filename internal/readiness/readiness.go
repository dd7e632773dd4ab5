// Package readiness holds what the router's and the subscriber's readiness
// share: a Problem (a reason and its detail, one line of /readyz) and the
// not-ready gauges that export them, one series per known reason.
package readiness

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Problem is one reason a daemon is not ready, with what it saw.
type Problem struct {
	Reason string
	Detail string
}

func (p Problem) String() string { return p.Reason + ": " + p.Detail }

// NotReadyGauges registers name{reason} for each of reasons: 1 while
// problems() holds one of that reason, else 0. Every series exists from the
// first scrape.
func NotReadyGauges(reg prometheus.Registerer, name, help string, reasons []string, problems func() []Problem) {
	f := promauto.With(reg)
	for _, r := range reasons {
		f.NewGaugeFunc(prometheus.GaugeOpts{Name: name, ConstLabels: prometheus.Labels{"reason": r}, Help: help}, func() float64 {
			for _, p := range problems() {
				if p.Reason == r {
					return 1
				}
			}
			return 0
		})
	}
}
