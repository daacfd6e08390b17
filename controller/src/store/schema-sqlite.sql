-- SQLite form of shared/fixtures/schema-mysql.sql, for `multinicctl demo` and
-- tests only. Same tables, columns and defaults.
CREATE TABLE IF NOT EXISTS multi_subnet (
    subnet_id   VARCHAR(36)  NOT NULL PRIMARY KEY,
    subnet_name VARCHAR(255),
    cidr        VARCHAR(43),
    network_id  VARCHAR(36),
    status      VARCHAR(32),
    created_at  TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    modified_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    deleted_at  TIMESTAMP NULL
);

CREATE TABLE IF NOT EXISTS multi_interface (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    port_id            VARCHAR(36)  NOT NULL UNIQUE,
    subnet_id          VARCHAR(36)  NOT NULL,
    macaddress         VARCHAR(17)  NOT NULL,
    attached_node_id   VARCHAR(36),
    attached_node_name VARCHAR(255),
    cr_namespace       VARCHAR(255),
    cr_name            VARCHAR(255),
    status             VARCHAR(32),
    netplan_success    TINYINT(1) NOT NULL DEFAULT 0,
    address            VARCHAR(45),
    cidr               VARCHAR(43),
    mtu                INT DEFAULT 1500,
    created_at         TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    modified_at        TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    deleted_at         TIMESTAMP NULL
);

CREATE INDEX IF NOT EXISTS idx_node ON multi_interface (attached_node_name);

-- MySQL's ON UPDATE CURRENT_TIMESTAMP, except for our own netplan_success
-- writes (which keep modified_at, as they do on MySQL).
CREATE TRIGGER IF NOT EXISTS multi_interface_modified AFTER UPDATE ON multi_interface
FOR EACH ROW WHEN NEW.modified_at IS OLD.modified_at AND (
    NEW.macaddress IS NOT OLD.macaddress OR NEW.address IS NOT OLD.address OR NEW.cidr IS NOT OLD.cidr
    OR NEW.mtu IS NOT OLD.mtu OR NEW.deleted_at IS NOT OLD.deleted_at
    OR NEW.attached_node_name IS NOT OLD.attached_node_name)
BEGIN
    UPDATE multi_interface SET modified_at = CURRENT_TIMESTAMP WHERE id = NEW.id;
END;
