"""Create or update one grading-app user: python seed.py EMAIL PASSWORD [--admin]."""

from __future__ import annotations

import argparse
import os
import sys

import bcrypt
from cryptography.fernet import Fernet
from sqlalchemy import insert, select, update

# isort: split
# Sibling modules: the app runs from its deployed dir, never as a package.
from schema import make_engine, users


def seed_user(email: str, password: str, admin: bool, key: str) -> bool:
    """Upsert the user; returns True when it was created, False when updated."""
    password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    national_id = Fernet(key.encode()).encrypt(f"ID-{email}".encode()).decode()
    # Re-seeding also clears any lockout so a demo can always log in again.
    values = {
        "password_hash": password_hash,
        "national_id_encrypted": national_id,
        "is_admin": admin,
        "failed_login_attempts": 0,
        "locked_until": None,
    }
    with make_engine().begin() as conn:
        user_id = conn.execute(select(users.c.id).where(users.c.email == email)).scalar()
        if user_id is None:
            conn.execute(insert(users).values(email=email, **values))
            return True
        conn.execute(update(users).where(users.c.id == user_id).values(**values))
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("email")
    parser.add_argument("password")
    parser.add_argument("--admin", action="store_true", help="grant admin rights")
    args = parser.parse_args(argv)
    key = os.environ.get("DB_ENCRYPTION_KEY")
    if not key:
        print("ERROR: DB_ENCRYPTION_KEY is required", file=sys.stderr)
        return 2
    created = seed_user(args.email, args.password, args.admin, key)
    role = " (admin)" if args.admin else ""
    print(f"{'created' if created else 'updated'} user {args.email}{role}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
