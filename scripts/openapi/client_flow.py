"""The first thing an integrating team does, with the client openapi-python-client
generated from our document: register, log in, list products, place an order.

    python client_flow.py BASE_URL ADMIN_TOKEN

The admin token only creates the product to order; everything else is the new customer's.
Every call goes through the generated functions and models, and every answer is parsed
into the generated models (a mismatch between document and server fails here).
"""

import sys
import uuid

from client import AuthenticatedClient, Client
from client.api.auth import login, register
from client.api.orders import create_order, get_order
from client.api.products import create_product, list_products
from client.models import (
    ApiListProductResponse,
    ApiOkAuthResponse,
    ApiOkOrderResponse,
    ApiOkProductResponse,
    CreateOrderRequest,
    CreateProductRequest,
    ErrorEnvelope,
    LoginRequest,
    OrderItemRequest,
    RegisterRequest,
)


def expect(response, status, model):
    assert response.status_code == status, f"{response.status_code}: {response.content!r}"
    assert isinstance(response.parsed, model), f"parsed as {type(response.parsed)}"
    return response.parsed


def main(base, admin_token):
    suffix = uuid.uuid4().hex[:10]
    admin = AuthenticatedClient(base_url=base, token=admin_token, raise_on_unexpected_status=True)
    sku = f"CLIENT-{suffix}"
    created = expect(
        create_product.sync_detailed(
            client=admin,
            body=CreateProductRequest(sku=sku, name=f"Client teapot {suffix}", price_cents=2599, stock=5),
        ),
        201,
        ApiOkProductResponse,
    )
    product_id = created.data.id

    anonymous = Client(base_url=base, raise_on_unexpected_status=True)
    email = f"client-{suffix}@example.com"
    registered = expect(
        register.sync_detailed(
            client=anonymous,
            body=RegisterRequest(email=email, password="client-flow-pw", first_name="Ada", last_name="Client"),
        ),
        201,
        ApiOkAuthResponse,
    )
    assert registered.data.user.email == email

    duplicate = register.sync_detailed(client=anonymous, body=RegisterRequest(email=email, password="client-flow-pw"))
    assert duplicate.status_code == 409 and isinstance(duplicate.parsed, ErrorEnvelope)
    assert duplicate.parsed.error.code == "CONFLICT"

    session = expect(
        login.sync_detailed(client=anonymous, body=LoginRequest(email=email, password="client-flow-pw")),
        200,
        ApiOkAuthResponse,
    )
    customer = AuthenticatedClient(base_url=base, token=session.data.token, raise_on_unexpected_status=True)

    listed = expect(
        list_products.sync_detailed(client=anonymous, q=f"teapot {suffix}"), 200, ApiListProductResponse
    )
    assert [p.id for p in listed.data] == [product_id], listed
    assert listed.pagination.total == 1

    order = expect(
        create_order.sync_detailed(
            client=customer,
            body=CreateOrderRequest(items=[OrderItemRequest(product_id=product_id, quantity=2)]),
            idempotency_key=f"client-flow-{suffix}",
        ),
        201,
        ApiOkOrderResponse,
    )
    assert order.data.total_cents == 2 * 2599
    assert order.data.user_id == registered.data.user.id
    fetched = expect(get_order.sync_detailed(client=customer, id=order.data.id), 200, ApiOkOrderResponse)
    assert fetched.data.id == order.data.id and fetched.data.status.value == "pending"
    print(f"client flow: registered {email}, logged in, listed 1 product, ordered {order.data.id}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
