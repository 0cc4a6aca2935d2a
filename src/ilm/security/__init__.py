"""Access control: roles and API tokens.

``roles`` is pure (what a role includes, whether a token is still good);
``tokens`` keeps tokens in the catalog and is used through the service layer.
"""

from ilm.security.roles import ROLES, Principal, Role, TokenState, check_token, parse_role

__all__ = ["ROLES", "Principal", "Role", "TokenState", "check_token", "parse_role"]
