package matrix

import "testing"

func BenchmarkRoutes(b *testing.B) {
	m, err := Parse("inline", []byte(routingMatrix))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, ok := m.Routes("acme", "product"); !ok {
			b.Fatal("no route")
		}
	}
}
