// Command bbolt-reference creates and checks Portainer-shaped BoltDB files with
// the real bbolt library, so the Rust database toolkit can be tested against an
// independent implementation.
//
// Subcommands:
//
//	make   write a Portainer-shaped database, plaintext or encrypted
//	check  run bbolt's tx.Check() and decrypt every value with a key file
//	dump   print every bucket, key and value as hex, one record a line
//	bcrypt compare user N's Password field with a plaintext password file
//	hold   open a database read-write (taking bbolt's flock) until stdin closes
//
// Portainer's value format is nonce(12) || AES-256-GCM ciphertext || tag(16),
// with key = SHA-256 of the key file's exact bytes. A stored value that is
// exactly "false" is passed through without decryption, as Portainer does.
package main

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/crypto/bcrypt"
)

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: bbolt-reference make|check|dump|bcrypt|hold [flags]"))
	}
	var err error
	switch os.Args[1] {
	case "make":
		err = runMake(os.Args[2:])
	case "check":
		err = runCheck(os.Args[2:])
	case "dump":
		err = runDump(os.Args[2:])
	case "bcrypt":
		err = runBcrypt(os.Args[2:])
	case "hold":
		err = runHold(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bbolt-reference:", err)
	os.Exit(1)
}

// cipherFromKeyFile builds Portainer's AES-256-GCM cipher from a key file, or
// returns nil when path is empty (plaintext database).
func cipherFromKeyFile(path string) (cipher.AEAD, error) {
	if path == "" {
		return nil, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(raw)
	block, err := aes.NewCipher(sum[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// sealer encrypts values like Portainer and records every nonce it used, so
// tests can search a file for any leftover ciphertext of this key.
type sealer struct {
	aead   cipher.AEAD
	nonces [][]byte
}

func (s *sealer) seal(plain []byte) []byte {
	if s.aead == nil {
		return plain
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		fail(err)
	}
	s.nonces = append(s.nonces, nonce)
	return s.aead.Seal(nonce, nonce, plain, nil)
}

func openValue(aead cipher.AEAD, stored []byte) ([]byte, error) {
	if aead == nil || string(stored) == "false" {
		return stored, nil
	}
	if len(stored) < aead.NonceSize() {
		return nil, errors.New("value shorter than a nonce")
	}
	return aead.Open(nil, stored[:aead.NonceSize()], stored[aead.NonceSize():], nil)
}

// portainerKey is Portainer's ConvertToKey: an 8-byte big-endian integer.
func portainerKey(id int) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, uint64(id))
	return b
}

type makeConfig struct {
	out, keyFile, noncesOut, adminPassword string
	pageSize, keys, largeValues, seed      int
	sizeMiB                                int
	noFreelistSync, oldVersion             bool
}

func runMake(args []string) error {
	var c makeConfig
	fs := flag.NewFlagSet("make", flag.ExitOnError)
	fs.StringVar(&c.out, "out", "", "database file to create")
	fs.StringVar(&c.keyFile, "key", "", "key file; empty writes a plaintext database")
	fs.StringVar(&c.noncesOut, "nonces-out", "", "file that receives every nonce used, hex, one a line")
	fs.StringVar(&c.adminPassword, "admin-password", "initial-password", "plaintext password of user 1")
	fs.IntVar(&c.pageSize, "page-size", 0, "page size in bytes; 0 uses the OS page size")
	fs.IntVar(&c.keys, "keys", 3000, "number of keys in the bucket 'bulk'")
	fs.IntVar(&c.largeValues, "large", 6, "number of large (overflow) values in the bucket 'stacks'")
	fs.IntVar(&c.seed, "seed", 1, "seed for value contents")
	fs.IntVar(&c.sizeMiB, "size-mib", 0, "add about this many MiB of 4000-byte values in the bucket 'blobs'")
	fs.BoolVar(&c.noFreelistSync, "no-freelist-sync", false, "do not persist the freelist")
	fs.BoolVar(&c.oldVersion, "old-version", false, "write the version bucket as Portainer 2.16 and older did")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.out == "" {
		return errors.New("make: -out is required")
	}
	aead, err := cipherFromKeyFile(c.keyFile)
	if err != nil {
		return err
	}
	s := &sealer{aead: aead}
	if err := writeDatabase(c, s); err != nil {
		return err
	}
	return writeNonces(c.noncesOut, s.nonces)
}

func writeNonces(path string, nonces [][]byte) error {
	if path == "" {
		return nil
	}
	var buf bytes.Buffer
	for _, n := range nonces {
		buf.WriteString(hex.EncodeToString(n))
		buf.WriteByte('\n')
	}
	return os.WriteFile(path, buf.Bytes(), 0o600)
}

func writeDatabase(c makeConfig, s *sealer) error {
	opts := &bolt.Options{Timeout: time.Second, NoFreelistSync: c.noFreelistSync}
	if c.pageSize != 0 {
		opts.PageSize = c.pageSize
	}
	db, err := bolt.Open(c.out, 0o600, opts)
	if err != nil {
		return err
	}
	defer db.Close()
	rng := mrand.New(mrand.NewSource(int64(c.seed)))
	steps := []func(*bolt.Tx) error{
		func(tx *bolt.Tx) error { return putVersion(tx, s, c.oldVersion) },
		func(tx *bolt.Tx) error { return putUsers(tx, s, c.adminPassword) },
		func(tx *bolt.Tx) error { return putSmallBuckets(tx, s) },
		func(tx *bolt.Tx) error { return putBulk(tx, s, rng, c.keys) },
		func(tx *bolt.Tx) error { return putLarge(tx, s, rng, c.largeValues) },
		// Later transactions overwrite and delete, so free pages and the older
		// meta's tree still contain earlier ciphertext.
		func(tx *bolt.Tx) error { return churn(tx, s, rng) },
		func(tx *bolt.Tx) error { return putLarge(tx, s, rng, c.largeValues) },
	}
	for _, step := range steps {
		if err := db.Update(step); err != nil {
			return err
		}
	}
	return putBlobs(db, s, rng, c.sizeMiB)
}

func putVersion(tx *bolt.Tx, s *sealer, old bool) error {
	b, err := tx.CreateBucketIfNotExists([]byte("version"))
	if err != nil {
		return err
	}
	if old {
		if err := b.Put([]byte("DB_VERSION"), s.seal([]byte("35"))); err != nil {
			return err
		}
		return b.Put([]byte("INSTANCE_ID"), s.seal([]byte("5cba6b8f-6e5c-4d1a-8b2e-0d8a6b2c7f10")))
	}
	v := []byte(`{"SchemaVersion":"2.21.0","MigratorCount":0,"Edition":1,"InstanceID":"5cba6b8f-6e5c-4d1a-8b2e-0d8a6b2c7f10"}`)
	return b.Put([]byte("VERSION"), s.seal(v))
}

func putUsers(tx *bolt.Tx, s *sealer, password string) error {
	b, err := tx.CreateBucketIfNotExists([]byte("users"))
	if err != nil {
		return err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), 10)
	if err != nil {
		return err
	}
	for id := 1; id <= 3; id++ {
		seq, _ := b.NextSequence()
		user := map[string]interface{}{
			"Id": seq, "Username": fmt.Sprintf("user%d", id), "Password": string(hash),
			"Role": 1, "TokenIssueAt": 0,
			"ThemeSettings": map[string]string{"Color": ""}, "UseCache": true,
		}
		if id == 1 {
			user["Username"] = "admin"
		}
		if id == 3 {
			// Users signed in through OAuth or LDAP have no local password.
			delete(user, "Password")
		}
		raw, err := json.Marshal(user)
		if err != nil {
			return err
		}
		if err := b.Put(portainerKey(int(seq)), s.seal(raw)); err != nil {
			return err
		}
	}
	return nil
}

func putSmallBuckets(tx *bolt.Tx, s *sealer) error {
	names := []string{"settings", "endpoints", "api_key", "teams", "dockerhub", "ssl", "tunnel_server"}
	for i, name := range names {
		b, err := tx.CreateBucketIfNotExists([]byte(name))
		if err != nil {
			return err
		}
		for j := 0; j < i; j++ {
			seq, _ := b.NextSequence()
			v := fmt.Sprintf(`{"Id":%d,"Name":"%s-%d"}`, seq, name, j)
			if err := b.Put(portainerKey(int(seq)), s.seal([]byte(v))); err != nil {
				return err
			}
		}
	}
	// Portainer stores some values as a bare, unencrypted "false".
	b := tx.Bucket([]byte("settings"))
	if err := b.Put([]byte("FLAG_A"), []byte("false")); err != nil {
		return err
	}
	if err := b.Put([]byte("FLAG_B"), []byte("false")); err != nil {
		return err
	}
	// An encrypted "false" and an empty value.
	if err := b.Put([]byte("FLAG_C"), s.seal([]byte("false"))); err != nil {
		return err
	}
	if err := b.Put([]byte("EMPTY"), s.seal([]byte{})); err != nil {
		return err
	}
	_, err := tx.CreateBucketIfNotExists([]byte("empty_bucket"))
	return err
}

func randomJSON(rng *mrand.Rand, n int) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	body := make([]byte, n)
	for i := range body {
		body[i] = alphabet[rng.Intn(len(alphabet))]
	}
	return []byte(`{"Data":"` + string(body) + `"}`)
}

func putBulk(tx *bolt.Tx, s *sealer, rng *mrand.Rand, keys int) error {
	b, err := tx.CreateBucketIfNotExists([]byte("bulk"))
	if err != nil {
		return err
	}
	for i := 0; i < keys; i++ {
		seq, _ := b.NextSequence()
		if err := b.Put(portainerKey(int(seq)), s.seal(randomJSON(rng, 20+rng.Intn(200)))); err != nil {
			return err
		}
	}
	return nil
}

func putLarge(tx *bolt.Tx, s *sealer, rng *mrand.Rand, count int) error {
	b, err := tx.CreateBucketIfNotExists([]byte("stacks"))
	if err != nil {
		return err
	}
	for i := 0; i < count; i++ {
		key := []byte(fmt.Sprintf("stack-%03d", i))
		if err := b.Put(key, s.seal(randomJSON(rng, 5000+rng.Intn(70000)))); err != nil {
			return err
		}
	}
	return nil
}

func churn(tx *bolt.Tx, s *sealer, rng *mrand.Rand) error {
	b := tx.Bucket([]byte("bulk"))
	for i := 1; i <= 400; i++ {
		if i%3 == 0 {
			if err := b.Delete(portainerKey(i)); err != nil {
				return err
			}
			continue
		}
		if err := b.Put(portainerKey(i), s.seal(randomJSON(rng, 30))); err != nil {
			return err
		}
	}
	return tx.DeleteBucket([]byte("tunnel_server"))
}

func putBlobs(db *bolt.DB, s *sealer, rng *mrand.Rand, sizeMiB int) error {
	// 4000 plaintext bytes (4028 stored) fill one 4 KiB page each, so the
	// file size is close to the requested size.
	const valueSize = 4000
	total := sizeMiB * 1024 * 1024 / valueSize
	payload := randomJSON(rng, valueSize-11)
	for done := 0; done < total; {
		err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("blobs"))
			if err != nil {
				return err
			}
			for i := 0; i < 2000 && done < total; i++ {
				seq, _ := b.NextSequence()
				if err := b.Put(portainerKey(int(seq)), s.seal(payload)); err != nil {
					return err
				}
				done++
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func openReadOnly(path string) (*bolt.DB, error) {
	return bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
}

func runCheck(args []string) error {
	fs := flag.NewFlagSet("check", flag.ExitOnError)
	path := fs.String("db", "", "database file")
	keyFile := fs.String("key", "", "key file; empty checks structure only")
	if err := fs.Parse(args); err != nil {
		return err
	}
	aead, err := cipherFromKeyFile(*keyFile)
	if err != nil {
		return err
	}
	db, err := openReadOnly(*path)
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("tx.Check: %w", err)
		}
		return checkValues(tx, aead)
	})
}

func checkValues(tx *bolt.Tx, aead cipher.AEAD) error {
	counts := map[string]int{}
	values, passThrough := 0, 0
	err := tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		counts[string(name)] = 0
		return b.ForEach(func(k, v []byte) error {
			if v == nil {
				return fmt.Errorf("bucket %q: nested bucket %x", name, k)
			}
			if _, err := openValue(aead, v); err != nil {
				return fmt.Errorf("bucket %q key %x: %w", name, k, err)
			}
			if string(v) == "false" {
				passThrough++
			}
			counts[string(name)]++
			values++
			return nil
		})
	})
	if err != nil {
		return err
	}
	out := map[string]interface{}{"buckets": counts, "values": values, "false": passThrough}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// runDump prints "bucket <name-hex> <sequence>" and "value <name-hex> <key-hex>
// <value-hex>" lines in bbolt's order. With -key, values are decrypted first.
func runDump(args []string) error {
	fs := flag.NewFlagSet("dump", flag.ExitOnError)
	path := fs.String("db", "", "database file")
	keyFile := fs.String("key", "", "key file; values are printed decrypted when given")
	if err := fs.Parse(args); err != nil {
		return err
	}
	aead, err := cipherFromKeyFile(*keyFile)
	if err != nil {
		return err
	}
	db, err := openReadOnly(*path)
	if err != nil {
		return err
	}
	defer db.Close()
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	return db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			fmt.Fprintf(w, "bucket %x %d\n", name, b.Sequence())
			return b.ForEach(func(k, v []byte) error {
				plain, err := openValue(aead, v)
				if err != nil {
					return fmt.Errorf("bucket %q key %x: %w", name, k, err)
				}
				fmt.Fprintf(w, "value %x %x %x\n", name, k, plain)
				return nil
			})
		})
	})
}

func runBcrypt(args []string) error {
	fs := flag.NewFlagSet("bcrypt", flag.ExitOnError)
	path := fs.String("db", "", "database file")
	keyFile := fs.String("key", "", "key file of an encrypted database")
	user := fs.Int("user", 1, "user id")
	passwordFile := fs.String("password-file", "", "file with the plaintext password, exact bytes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	password, err := os.ReadFile(*passwordFile)
	if err != nil {
		return err
	}
	aead, err := cipherFromKeyFile(*keyFile)
	if err != nil {
		return err
	}
	db, err := openReadOnly(*path)
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("users"))
		if b == nil {
			return errors.New("no users bucket")
		}
		stored := b.Get(portainerKey(*user))
		if stored == nil {
			return fmt.Errorf("user %d not found", *user)
		}
		plain, err := openValue(aead, stored)
		if err != nil {
			return err
		}
		var u struct{ Password string }
		if err := json.Unmarshal(plain, &u); err != nil {
			return err
		}
		return bcrypt.CompareHashAndPassword([]byte(u.Password), password)
	})
}

func runHold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	path := fs.String("db", "", "database file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	db, err := bolt.Open(*path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	fmt.Println("locked")
	_, err = io.Copy(io.Discard, os.Stdin)
	return err
}
