package audit

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/keygrid/keygrid-hsm/internal/fsutil"
)

// ReplicaFile is where the replica id of the log at path is kept when the
// configuration names none: beside the log, so that the id goes with the
// log's volume (a replica that restarts on the same log keeps its id).
func ReplicaFile(path string) string { return path + ".replica" }

var replicaID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ErrNoReplicaID: the log has no replica id file (it never had a
// checkpoint signed by a server that named none).
var ErrNoReplicaID = errors.New("no replica id beside the audit log")

// ReadReplicaID reads the id in ReplicaFile(path).
func ReadReplicaID(path string) (string, error) {
	b, err := os.ReadFile(ReplicaFile(path))
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("%w: %s", ErrNoReplicaID, ReplicaFile(path))
	}
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(string(b))
	if !replicaID.MatchString(id) {
		return "", fmt.Errorf("%s does not hold a replica id", ReplicaFile(path))
	}
	return id, nil
}

// LoadReplicaID reads the id in ReplicaFile(path), making one at first
// use: the host name (cleaned), or a random id when there is none, with a
// random suffix, so that two hosts of one name differ.
func LoadReplicaID(path string) (string, error) {
	id, err := ReadReplicaID(path)
	if !errors.Is(err, ErrNoReplicaID) {
		return id, err
	}
	host, _ := os.Hostname()
	host = strings.Trim(regexp.MustCompile(`[^A-Za-z0-9._-]+`).ReplaceAllString(host, "-"), "-._")
	if len(host) > 48 {
		host = host[:48]
	}
	if host == "" {
		host = "replica"
	}
	suffix := make([]byte, 4)
	rand.Read(suffix)
	id = host + "-" + hex.EncodeToString(suffix)
	if err := fsutil.WriteFile(ReplicaFile(path), []byte(id+"\n"), 0o600); err != nil {
		return "", err
	}
	return id, nil
}
