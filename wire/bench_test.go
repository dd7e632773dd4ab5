package wire

import "testing"

var sampleEvent = []byte(`{"id":"01JDX","tenant":"acme","domain":"user","entity":"1042","keys":["user:1042"],"source_version":17,"origin":"profile-svc","ts":1764000000123}`)

func BenchmarkParseEvent(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := ParseEvent(sampleEvent); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMessageBody(b *testing.B) {
	m := &Message{Tenant: "acme", Tag: "active", Keys: []string{"user:1042"}, Event: "01JDX", Domain: "user", Origin: "profile-svc", TS: 1764000000123}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		MessageBody(m)
	}
}

func BenchmarkParseMessage(b *testing.B) {
	msg := []byte(`{"epoch":"9f2c1a","version":42,"tenant":"acme","tag":"active","keys":["user:1042"],"event":"01JDX","domain":"user","ts":1764000000123}`)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := ParseMessage(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// A raw single-key event as a router reads it from a stream entry (a
// string), as issue 21's benchmarks publish them.
func BenchmarkParseEventString(b *testing.B) {
	raw := `{"tenant":"t7","domain":"d42","keys":["user:100042"]}`
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseEventString(raw); err != nil {
			b.Fatal(err)
		}
	}
}
