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
