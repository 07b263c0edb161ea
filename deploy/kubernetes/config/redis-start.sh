#!/bin/sh
# redis-0 starts as the master, the others as its replicas; Sentinel moves the master later.
set -eu
ordinal="${HOSTNAME##*-}"
cp /config/redis.conf /data/redis.conf
echo "replica-announce-ip ${HOSTNAME}.redis" >> /data/redis.conf
if [ "$1" = sentinel ]; then
  cp /config/sentinel.conf /data/sentinel.conf
  echo "sentinel announce-ip ${HOSTNAME}.redis" >> /data/sentinel.conf
  exec redis-server /data/sentinel.conf --sentinel
fi
if [ "$ordinal" != 0 ]; then
  echo "replicaof redis-0.redis 6379" >> /data/redis.conf
fi
exec redis-server /data/redis.conf
