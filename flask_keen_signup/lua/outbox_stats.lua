-- Status: one consistent snapshot (a script, not MULTI: redis-py's cluster pipelines
-- differ from version to version). ARGV: row prefix, now.
local oldest = redis.call('ZRANGE', CREATED, 0, 0, 'WITHSCORES')
return {redis.call('ZCARD', OPEN), redis.call('ZCOUNT', OPEN, '-inf', ARGV[2]),
        redis.call('ZCOUNT', LEASED, '(' .. ARGV[2], '+inf'),
        redis.call('HMGET', META, 'delivered', 'skipped', 'resends', 'last_error'),
        redis.call('ZCARD', DEAD), oldest[2] or false}
