#!/usr/bin/env bash
# Starts the local services the tests use, if they are not running: RabbitMQ on 127.0.0.1:5672.
set -euo pipefail
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached
fi
timeout 120 rabbitmqctl -q await_startup
echo "services: RabbitMQ $(rabbitmqctl -q version) is up"
