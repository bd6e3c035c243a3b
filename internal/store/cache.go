package store

import (
	"context"
	"sync"
	"time"
)

// WithCache returns s with GetKey answered from memory for up to ttl.
//
// Every write through the returned store empties the cache at once, so this
// process never reads its own writes stale. Writes by other processes on the
// same database are seen within ttl: the staleness bound an operator
// chooses with storage.cache_ttl (0, the default for PostgreSQL, means no
// cache: every read goes to the database). Entries are deep copies; callers
// may change what they get.
func WithCache(s Store, ttl time.Duration) Store {
	if ttl <= 0 {
		return s
	}
	return &cachedStore{Store: s, ttl: ttl, m: map[string]cacheEntry{}}
}

type cacheEntry struct {
	k       *Key
	expires time.Time
}

type cachedStore struct {
	Store
	ttl time.Duration

	mu sync.RWMutex
	m  map[string]cacheEntry // by the id or name asked for
	// gen counts invalidations, so that a read that raced a write does not
	// store what it read before the write.
	gen uint64
}

// maxCacheEntries bounds the cache; past it, the cache starts over.
const maxCacheEntries = 100_000

func (c *cachedStore) GetKey(ctx context.Context, idOrName string) (*Key, error) {
	now := time.Now()
	c.mu.RLock()
	e, ok := c.m[idOrName]
	gen := c.gen
	c.mu.RUnlock()
	if ok && now.Before(e.expires) {
		return e.k.Clone(), nil
	}
	k, err := c.Store.GetKey(ctx, idOrName)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.gen == gen {
		if len(c.m) >= maxCacheEntries {
			clear(c.m)
		}
		c.m[idOrName] = cacheEntry{k: k.Clone(), expires: now.Add(c.ttl)}
	}
	c.mu.Unlock()
	return k, nil
}

func (c *cachedStore) invalidate() {
	c.mu.Lock()
	clear(c.m)
	c.gen++
	c.mu.Unlock()
}

func (c *cachedStore) CreateKey(ctx context.Context, k *Key) error {
	defer c.invalidate()
	return c.Store.CreateKey(ctx, k)
}

func (c *cachedStore) UpdateKey(ctx context.Context, k *Key) error {
	defer c.invalidate()
	return c.Store.UpdateKey(ctx, k)
}

func (c *cachedStore) DeleteKey(ctx context.Context, id string, revision int64) error {
	defer c.invalidate()
	return c.Store.DeleteKey(ctx, id, revision)
}

// Unwrap returns the store under the cache (for optional interfaces such
// as Migrator and Snapshotter).
func (c *cachedStore) Unwrap() Store { return c.Store }
