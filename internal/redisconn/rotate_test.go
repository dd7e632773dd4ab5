package redisconn

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
)

// rotate writes a password file the way a container secret is renewed: a
// new file renamed over the old one.
func rotate(t *testing.T, path, pw string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// An operator rotates a Redis password: the secret's file gets the new
// one, the user loses the old one and its connections are killed (a
// failover or a restart of Redis does the same). The client keeps working
// without a restart, and a file that is missing for a moment mid-renewal
// does not stop new connections either.
func TestPasswordFileRotatedWithoutRestart(t *testing.T) {
	ctx := context.Background()
	s := redistest.Start(t)
	c := redistest.StartCluster(t, 3, 0)
	for _, tc := range []struct {
		name    string
		url     string
		cluster bool
		admin   func(func(*redis.Client) error) error
	}{
		{"standalone", "redis://rot@" + s.Addr, false, func(f func(*redis.Client) error) error { return f(s.Client(t)) }},
		{"cluster", "redis://rot@" + c.Addrs[0], true, func(f func(*redis.Client) error) error {
			return c.Client(t).ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error { return f(n) })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setPass := func(pw string) {
				t.Helper()
				err := tc.admin(func(a *redis.Client) error {
					if err := a.Do(ctx, "ACL", "SETUSER", "rot", "on", "resetpass", ">"+pw, "~*", "&*", "+@all").Err(); err != nil {
						return err
					}
					return a.Do(ctx, "CLIENT", "KILL", "USER", "rot").Err()
				})
				if err != nil && !strings.Contains(err.Error(), "No such user") {
					t.Fatal(err)
				}
			}
			setPass("old")
			file := filepath.Join(t.TempDir(), "pw")
			rotate(t, file, "old")
			client := open(t, tc.url, Options{Cluster: tc.cluster, PasswordFile: file})
			if err := client.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatalf("with the first password: %v", err)
			}

			rotate(t, file, "new")
			setPass("new")
			var last error
			if err := redistest.Wait(ctx, 10*time.Second, "a command with the rotated password", func() bool {
				last = client.Set(ctx, "k", "v2", 0).Err()
				return last == nil
			}); err != nil {
				t.Fatalf("%v; the last command's error: %v", err, last)
			}

			// Mid-renewal the file is gone for a moment: new connections
			// keep the password last read.
			if err := os.Remove(file); err != nil {
				t.Fatal(err)
			}
			setPass("new")
			redistest.Eventually(t, 10*time.Second, "a command while the file is missing", func() bool {
				return client.Set(ctx, "k", "v3", 0).Err() == nil
			})
		})
	}
}
