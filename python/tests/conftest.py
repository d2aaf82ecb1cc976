"""Every socket the tests make times out instead of hanging: a test that
waits forever fails after 20 s with socket.timeout."""

import socket

socket.setdefaulttimeout(20)
