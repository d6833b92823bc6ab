-- One database per service on one server (docker-compose).
CREATE DATABASE sagaflow_order;
CREATE DATABASE sagaflow_inventory;
CREATE DATABASE sagaflow_payment;
CREATE DATABASE sagaflow_notification;
CREATE DATABASE sagaflow_saga;
CREATE DATABASE sagaflow_query;
