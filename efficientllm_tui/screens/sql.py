"""stub"""
from .base import AppScreen
class S(AppScreen):
    NAME = "sql"
SCREEN = S
